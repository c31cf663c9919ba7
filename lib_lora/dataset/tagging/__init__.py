"""Tagging a folder with a WD14 ONNX tagger: models, the resumable run, shards and caption writing."""
