"""Models: references to them, loading and saving, and the tiny presets built from config."""
