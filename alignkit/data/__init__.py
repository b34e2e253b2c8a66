"""Reading, validating and tokenizing preference, SFT and prompt-only data."""
