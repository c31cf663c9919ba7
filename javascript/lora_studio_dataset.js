// LoRA Studio, Dataset tab: clicks on our own HTML (gallery, tag chips, frequency table), chip dragging,
// shortcuts, tag autocomplete and the unsaved-changes warning. Every global is prefixed `loraStudio`.
// The page talks to Python through one hidden textbox of ours (#lora_studio_dataset_chip_action): an action is
// written there as JSON and its input event fired. Elements are found by our elem_ids and data attributes only.

const loraStudioDatasetIds = {
    tab: "lora_studio_dataset_tab",
    action: "lora_studio_dataset_chip_action",
    unsaved: "lora_studio_dataset_unsaved",
    save: "lora_studio_dataset_save",
    undo: "lora_studio_dataset_undo",
    redo: "lora_studio_dataset_redo",
    tagList: "lora_studio_dataset_tag_list",
};
let loraStudioDatasetNonce = 0;
let loraStudioDatasetDragged = null;

function loraStudioDatasetElement(id) {
    const root = typeof gradioApp === "function" ? gradioApp() : document;
    return (root.querySelector ? root.querySelector("#" + id) : null) || document.getElementById(id);
}

// Send one action (e.g. {op: "remove", key, index, tag}) to Python; false when the tab is not on the page.
function loraStudioDatasetSend(action) {
    const box = loraStudioDatasetElement(loraStudioDatasetIds.action);
    const field = box && (box.matches("textarea, input") ? box : box.querySelector("textarea, input"));
    if (!field) {
        return false;
    }
    loraStudioDatasetNonce += 1;
    field.value = JSON.stringify(Object.assign({}, action, {nonce: String(loraStudioDatasetNonce)}));
    field.dispatchEvent(new Event("input", {bubbles: true}));
    return true;
}

function loraStudioDatasetTarget(event) {
    const path = typeof event.composedPath === "function" ? event.composedPath() : [];
    return path.length && path[0] instanceof Element ? path[0] : event.target;
}

// The action a click on our HTML asks for, or null when the click is not on one of our controls.
function loraStudioDatasetActionFor(control) {
    const op = control.dataset.loraStudioOp;
    if (op === "select") {
        return {op: op, key: control.dataset.key};
    }
    if (op === "include" || op === "exclude") {
        return {op: op, tag: control.dataset.tag};
    }
    const chip = control.closest(".lora-studio-chip");
    const chips = control.closest(".lora-studio-chips");
    if (!chip || !chips) {
        return null;
    }
    return {op: op, key: chips.dataset.key, index: Number(chip.dataset.index), tag: chip.dataset.tag};
}

function loraStudioDatasetOnClick(event) {
    const target = loraStudioDatasetTarget(event);
    const control = target && target.closest ? target.closest("[data-lora-studio-op]") : null;
    if (!control || control.disabled || !control.closest("#" + loraStudioDatasetIds.tab)) {
        return;
    }
    const action = loraStudioDatasetActionFor(control);
    if (action && loraStudioDatasetSend(action)) {
        event.preventDefault();
    }
}

function loraStudioDatasetChipOf(event) {
    const target = loraStudioDatasetTarget(event);
    return target && target.closest ? target.closest("#" + loraStudioDatasetIds.tab + " .lora-studio-chip") : null;
}

function loraStudioDatasetOnDragStart(event) {
    const chip = loraStudioDatasetChipOf(event);
    if (!chip) {
        return;
    }
    loraStudioDatasetDragged = chip;
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", chip.dataset.tag);
}

function loraStudioDatasetOnDragOver(event) {
    if (loraStudioDatasetDragged && loraStudioDatasetChipOf(event)) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "move";
    }
}

function loraStudioDatasetOnDrop(event) {
    const chip = loraStudioDatasetChipOf(event);
    const dragged = loraStudioDatasetDragged;
    loraStudioDatasetDragged = null;
    if (!chip || !dragged || chip === dragged) {
        return;
    }
    event.preventDefault();
    const chips = dragged.closest(".lora-studio-chips");
    loraStudioDatasetSend({
        op: "move",
        key: chips ? chips.dataset.key : "",
        index: Number(dragged.dataset.index),
        tag: dragged.dataset.tag,
        to: Number(chip.dataset.index),
    });
}

// Tag inputs (elem_classes lora-studio-tag-input) get the datalist of tag suggestions when first focused.
function loraStudioDatasetOnFocus(event) {
    const target = loraStudioDatasetTarget(event);
    if (target && target.tagName === "INPUT" && target.closest && target.closest(".lora-studio-tag-input")) {
        target.setAttribute("list", loraStudioDatasetIds.tagList);
        target.setAttribute("autocomplete", "off");
    }
}

function loraStudioDatasetVisible(element) {
    return Boolean(element && element.offsetParent !== null);
}

function loraStudioDatasetClick(id) {
    const button = loraStudioDatasetElement(id);
    if (button && !button.disabled) {
        button.click();
        return true;
    }
    return false;
}

// Ctrl+S saves; Ctrl+Z / Ctrl+Shift+Z / Ctrl+Y undo and redo (outside text fields, which keep their own undo).
function loraStudioDatasetOnKey(event) {
    if (!(event.ctrlKey || event.metaKey) || event.altKey) {
        return;
    }
    const tab = loraStudioDatasetElement(loraStudioDatasetIds.tab);
    if (!loraStudioDatasetVisible(tab)) {
        return;
    }
    const target = loraStudioDatasetTarget(event);
    const inTab = target === document.body || (target && tab.contains(target));
    if (!inTab) {
        return;
    }
    const typing = target && target.matches && target.matches("input, textarea, select, [contenteditable]");
    const key = event.key.toLowerCase();
    let button = null;
    if (key === "s") {
        button = loraStudioDatasetIds.save;
    } else if (key === "z" && !typing) {
        button = event.shiftKey ? loraStudioDatasetIds.redo : loraStudioDatasetIds.undo;
    } else if (key === "y" && !typing) {
        button = loraStudioDatasetIds.redo;
    }
    if (button && loraStudioDatasetClick(button)) {
        event.preventDefault();
    }
}

// How many captions have unsaved edits, as our status bar says (0 when the tab is not on the page).
function loraStudioDatasetUnsavedCount() {
    const bar = loraStudioDatasetElement(loraStudioDatasetIds.unsaved);
    const marker = bar && bar.querySelector("[data-lora-studio-unsaved]");
    return marker ? Number(marker.dataset.loraStudioUnsaved) || 0 : 0;
}

function loraStudioDatasetOnBeforeUnload(event) {
    if (loraStudioDatasetUnsavedCount() > 0) {
        event.preventDefault();
        event.returnValue = "";
        return "";
    }
    return undefined;
}

document.addEventListener("click", loraStudioDatasetOnClick);
document.addEventListener("dragstart", loraStudioDatasetOnDragStart);
document.addEventListener("dragover", loraStudioDatasetOnDragOver);
document.addEventListener("drop", loraStudioDatasetOnDrop);
document.addEventListener("focusin", loraStudioDatasetOnFocus);
document.addEventListener("keydown", loraStudioDatasetOnKey);
window.addEventListener("beforeunload", loraStudioDatasetOnBeforeUnload);
