"""Adapters that need the WebUI; with the WebUI hosts (hosts/a1111*, forge*, webui_*) the only code that reaches it.

Every `modules` import happens inside a function, so importing this package does nothing to the WebUI.
"""
