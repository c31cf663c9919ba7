// LoRA Studio: refresh the model panel when the LoRA Studio tab is opened in the WebUI.
// Every global is prefixed `loraStudio`; in the standalone app (no onUiTabChange) this only defines helpers.

function loraStudioRoot() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

function loraStudioRefreshModelInfo() {
    const button = loraStudioRoot().querySelector("#lora_studio_model_refresh");
    if (button) {
        button.click();
    }
    return Boolean(button);
}

function loraStudioOnTabChange() {
    if (typeof get_uiCurrentTabContent !== "function") {
        return;
    }
    const tab = get_uiCurrentTabContent();
    if (tab && tab.id === "tab_lora_studio") {
        loraStudioRefreshModelInfo();
    }
}

if (typeof onUiTabChange === "function") {
    onUiTabChange(loraStudioOnTabChange);
}
