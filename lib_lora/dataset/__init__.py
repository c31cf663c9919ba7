"""Datasets of image + caption pairs: folders, safe image reading, lossless captions, tag operations."""
