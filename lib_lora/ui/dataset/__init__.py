"""The Dataset tab: a folder's images and captions, the tagger, and batch edits, in gradio."""
