"""Model loading, tiny presets, SFT and DPO (TRL + PEFT)."""
