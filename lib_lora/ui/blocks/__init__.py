"""The Block Weight tab: presets, the editor, the picker, comparison runs and saving a weighted file."""
