"""What the Dataset tab shows, rendered from a DatasetSession as plain values: HTML, Markdown, choices.

`render(session, message)` returns {part name: value}; wiring.py turns the parts into gradio updates and
sends only those that changed. The HTML is ours (gallery, chips, frequency table, status bar): every element
the page's JavaScript acts on carries `data-lora-studio-op` plus the key / index / tag it acts on, and every
text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...dataset.editing import FREQUENCY_ROWS, PAGE_SIZE, DatasetSession, code
from ...dataset.folder import ROOT_SUBSET
from ...jobs import JobSnapshot
from ...wording import plural
from ..model_panel import escape_markdown
from .thumbs import PREVIEW_SIDE, image_uri

TAG_LIST_ID = "lora_studio_dataset_tag_list"
"""The <datalist> of tag suggestions; the page's script points our tag inputs at it."""
OP = "data-lora-studio-op"


@dataclass(frozen=True)
class Choices:
    """A dropdown or check list's choices and value."""

    choices: tuple[str, ...]
    value: Any


@dataclass(frozen=True)
class Visible:
    visible: bool


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def status_html(session: DatasetSession) -> str:
    """The unsaved-changes bar; `data-lora-studio-unsaved` is what the page's unload guard reads."""
    unsaved = len(session.unsaved_keys()) if session.dataset is not None else 0
    parts = [f"<strong>{plural(unsaved, 'unsaved caption')}</strong>" if unsaved else "All captions saved"]
    if session.history.undo_description:
        parts.append(f"Undo: {_e(session.history.undo_description)}")
    if session.history.redo_description:
        parts.append(f"Redo: {_e(session.history.redo_description)}")
    state = "lora-studio-dirty" if unsaved else "lora-studio-clean"
    return (f'<div class="lora-studio-unsaved {state}" data-lora-studio-unsaved="{unsaved}">'
            + " · ".join(parts) + "</div>")


def conflicts_html(session: DatasetSession) -> str:
    rows = [f"<li><code>{_e(key)}</code>: {_e(reason)}</li>" for key, reason in session.conflicts.items()]
    failed = [f"<li><code>{_e(key)}</code>: {_e(reason)}</li>" for key, reason in session.failures.items()]
    out = []
    if rows:
        out.append("<p><strong>Changed on disk since loaded</strong> (your edits were not written): overwrite "
                   "them with your edits (the file on disk is backed up first), or reload them from disk "
                   "(your edits stay one Undo away).</p><ul>" + "".join(rows) + "</ul>")
    if failed:
        out.append("<p><strong>Could not be written or read:</strong></p><ul>" + "".join(failed) + "</ul>")
    return f'<div class="lora-studio-conflicts">{"".join(out)}</div>' if out else ""


def summary_markdown(session: DatasetSession) -> str:
    dataset = session.dataset
    if dataset is None:
        return "No dataset loaded. Choose a folder inside the allowed folders and press **Load**."
    lines = [f"**{escape_markdown(str(dataset.root))}** · caption files {code(dataset.caption_ext)}"
             f" · {'with' if dataset.recursive else 'without'} subfolders", "",
             "| folder | repeats | images | with captions |", "|---|---|---|---|"]
    for subset in dataset.subsets():
        name = "(the folder itself)" if subset.path == ROOT_SUBSET else escape_markdown(subset.path)
        repeats = subset.repeats if subset.repeats is not None else "—"
        lines.append(f"| {name} | {repeats} | {subset.images} | {subset.captioned} |")
    return "\n".join(lines)


def problems_html(session: DatasetSession) -> str:
    dataset = session.dataset
    if dataset is None:
        return ""
    found = [*(str(problem) for problem in dataset.problems), *session.left_out]
    if not found:
        return '<p class="lora-studio-problems">No problems found.</p>'
    items = "".join(f"<li>{_e(text)}</li>" for text in found)
    return (f'<div class="lora-studio-problems"><p><strong>{plural(len(found), "problem")}</strong> (these files '
            f"are left out):</p><ul>{items}</ul></div>")


def gallery_html(session: DatasetSession) -> str:
    """The current page of the filtered images as buttons holding thumbnails."""
    if session.dataset is None:
        return '<p class="lora-studio-empty">No dataset loaded.</p>'
    keys = session.page_keys()
    if not keys:
        return '<p class="lora-studio-empty">No image matches the filter.</p>'
    cells = []
    for key in keys:
        item = session.dataset.item(key)
        uri = image_uri(item.image, cache_dir=session.thumb_dir())
        name = Path(key).name
        classes = ["lora-studio-thumb"]
        if key == session.selected:
            classes.append("lora-studio-selected")
        if session.is_unsaved(key):
            classes.append("lora-studio-edited")
        picture = (f'<img src="{uri}" alt="{_e(name)}" loading="lazy">' if uri
                   else '<span class="lora-studio-thumb-missing">cannot show</span>')
        title = f"{key}\n{session.texts[key]}"
        cells.append(f'<button type="button" class="{" ".join(classes)}" {OP}="select" data-key="{_e(key)}" '
                     f'title="{_e(title)}">{picture}<span class="lora-studio-thumb-name">{_e(name)}</span></button>')
    return f'<div class="lora-studio-gallery">{"".join(cells)}</div>'


def page_markdown(session: DatasetSession) -> str:
    if session.dataset is None:
        return ""
    matching = len(session.filtered_keys())
    return (f"Page {session.page + 1} of {session.page_count()} · {plural(matching, 'image')} in the filter "
            f"(of {len(session.texts)}, {PAGE_SIZE} per page)")


def chips_html(session: DatasetSession) -> str:
    """The selected caption's tags as chips: × removes, ←/→ (or dragging) moves; index and tag identify it."""
    key = session.selected
    if session.dataset is None or key is None or key not in session.texts:
        return '<p class="lora-studio-empty">Select an image to edit its tags.</p>'
    tags = session.tags_of(key)
    chips = []
    for index, tag in enumerate(tags):
        left = "disabled" if index == 0 else ""
        right = "disabled" if index == len(tags) - 1 else ""
        chips.append(
            f'<span class="lora-studio-chip" draggable="true" data-index="{index}" data-tag="{_e(tag)}">'
            f'<button type="button" {OP}="left" title="Move left" aria-label="Move {_e(tag)} left" {left}>←</button>'
            f'<span class="lora-studio-chip-text">{_e(tag)}</span>'
            f'<button type="button" {OP}="right" title="Move right" aria-label="Move {_e(tag)} right" '
            f'{right}>→</button>'
            f'<button type="button" class="lora-studio-chip-remove" {OP}="remove" title="Remove" '
            f'aria-label="Remove {_e(tag)}">×</button></span>'
        )
    body = "".join(chips) if chips else '<span class="lora-studio-empty">No tags yet: type one below.</span>'
    return f'<div class="lora-studio-chips" data-key="{_e(key)}">{body}</div>'


def preview_html(session: DatasetSession) -> str:
    key = session.selected
    if session.dataset is None or key is None or key not in session.texts:
        return ""
    item = session.dataset.item(key)
    uri = image_uri(item.image, PREVIEW_SIDE, session.thumb_dir())
    picture = f'<img src="{uri}" alt="{_e(key)}">' if uri else "<p>This image cannot be shown.</p>"
    caption = session.loaded.get(key)
    notes = [_e(key)]
    if caption is None:
        notes.append(f"no {_e(item.caption_path.suffix)} file yet")
    elif caption.legacy_encoding:
        notes.append(f"caption read as {_e(caption.encoding)}; saved as UTF-8")
    if session.is_unsaved(key):
        notes.append("<strong>unsaved</strong>")
    return f'<figure class="lora-studio-preview">{picture}<figcaption>{" · ".join(notes)}</figcaption></figure>'


def frequency_html(session: DatasetSession, search: str = "") -> str:
    """One page of the tags of the filtered images by count (and over all images), those matching `search`; a
    tag's button adds it to the filter."""
    if session.dataset is None:
        return ""
    rows, page, pages = session.tag_table_page(search)
    shown = rows[page * FREQUENCY_ROWS:(page + 1) * FREQUENCY_ROWS]
    overall = session.texts.index.count
    body = "".join(
        f'<tr><td><button type="button" {OP}="include" data-tag="{_e(tag)}" title="Show only images with this '
        f'tag">{_e(tag)}</button></td><td>{count}</td><td>{overall(tag)}</td><td><button type="button" '
        f'{OP}="exclude" data-tag="{_e(tag)}" title="Hide images with this tag" aria-label="Hide images with '
        f'{_e(tag)}">−</button></td></tr>'
        for tag, count in shown
    )
    first = page * FREQUENCY_ROWS + 1 if shown else 0
    where = f" matching {_e(search.strip())}" if search and search.strip() else ""
    more = (f'<p class="lora-studio-frequency-page">Tags {first}–{first + len(shown) - 1 if shown else 0} of '
            f"{len(rows)}{where} (page {page + 1} of {pages}); ◀ Tags / Tags ▶ turn the pages, the search box "
            "finds a tag.</p>") if pages > 1 or where else ""
    return ('<div class="lora-studio-frequency-scroll"><table class="lora-studio-frequency"><thead><tr>'
            f'<th>tag</th><th>in filter</th><th>all</th><th></th>'
            f"</tr></thead><tbody>{body}</tbody></table></div>{more}")


def suggestions_html(session: DatasetSession) -> str:
    return _datalist(session.suggestions())


@lru_cache(maxsize=4)
def _datalist(tags: tuple[str, ...]) -> str:
    """The <datalist> of `tags` (built once per list: a tagger's vocabulary is some 10,000 tags)."""
    options = "".join(f'<option value="{_e(tag)}"></option>' for tag in tags)
    return f'<datalist id="{TAG_LIST_ID}">{options}</datalist>'


def tag_status_html(snapshot: JobSnapshot | None) -> str:
    """The tagging job's line: state, progress, provider in use and any fallback warning."""
    if snapshot is None:
        return ""
    provider = snapshot.extra.get("provider")
    warnings = snapshot.extra.get("warnings") or ()
    parts = [f'<span class="lora-studio-job-line">{_e(snapshot.describe())}</span>']
    if provider:
        parts.append(f"<span>running on <strong>{_e(str(provider).removesuffix('ExecutionProvider'))}</strong></span>")
    parts.extend(f'<span class="lora-studio-warning">⚠ {_e(warning)}</span>' for warning in warnings)
    return f'<div class="lora-studio-job" data-lora-studio-job="{_e(snapshot.state)}">{" · ".join(parts)}</div>'


def render(session: DatasetSession, message: str, parts: Iterable[str] | None = None) -> dict[str, Any]:
    """The tab's parts (all, or those named) for the session's current state; `message` is the action's result."""
    loaded = session.dataset is not None
    selected = session.selected if loaded and session.selected in session.texts else None

    folders = [s for s in session.dataset.subsets() if s.path != ROOT_SUBSET] if loaded else []
    chosen = next((s for s in folders if s.path == session.chosen_subset), folders[0] if folders else None)

    def subsets() -> Choices:
        return Choices(tuple(s.path for s in folders), chosen.path if chosen else None)

    def images() -> Choices:
        keys = tuple(session.page_keys()) if loaded else ()  # the page's images: 50,000 choices would not do
        return Choices(keys if selected is None or selected in keys else (selected, *keys), selected)

    def scope() -> str:
        if not loaded:
            return ""
        return f"Batch edits change the **{plural(len(session.filtered_keys()), 'image')}** in the filter " \
               "(one Undo each)."

    renderers: dict[str, Callable[[], Any]] = {
        "message": lambda: message,
        "status": lambda: status_html(session),
        "conflicts": lambda: conflicts_html(session),
        "conflict_row": lambda: Visible(bool(session.conflicts)),
        "summary": lambda: summary_markdown(session),
        "problems": lambda: problems_html(session),
        "subset": subsets,
        "repeats": lambda: chosen.repeats if chosen is not None and chosen.repeats is not None else 1,
        "gallery": lambda: gallery_html(session),
        "page": lambda: page_markdown(session),
        "image": images,
        "preview": lambda: preview_html(session),
        "chips": lambda: chips_html(session),
        "caption": lambda: session.texts[selected] if selected is not None else "",
        "caption_key": lambda: selected or "",
        "add_tag": lambda: "",
        "frequency": lambda: frequency_html(session, session.frequency_search),
        "suggestions": lambda: suggestions_html(session),
        "include": lambda: ", ".join(session.tag_filter.include),
        "exclude": lambda: ", ".join(session.tag_filter.exclude),
        "scope": scope,
        "proposals": lambda: Choices(tuple(session.proposals), tuple(session.proposals)),
        "tag_status": lambda: tag_status_html(session.job.snapshot() if session.job is not None else None),
    }
    names = PARTS if parts is None else tuple(parts)
    return {name: renderers[name]() for name in names}


PARTS: tuple[str, ...] = (
    "message", "status", "conflicts", "conflict_row", "summary", "problems", "subset", "repeats", "gallery", "page",
    "image",
    "preview", "chips", "caption", "caption_key", "add_tag", "frequency", "suggestions", "include", "exclude",
    "scope", "proposals", "tag_status",
)
"""Every part render() knows, in the order the tab's outputs list them."""
