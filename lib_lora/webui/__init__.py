"""Adapters that need the WebUI: the only part of lib_lora besides hosts/a1111.py that imports `modules.*`.

Every `modules` import happens inside a function, so importing this package does nothing to the WebUI.
"""
