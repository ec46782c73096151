"""Names shared by the graph configuration and the tools (kept here to avoid import cycles)."""

CLUE_TYPES = ("ocr", "objects", "scene", "caption")
