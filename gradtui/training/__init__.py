"""The probe and the training-side code (torch, no textual)."""
