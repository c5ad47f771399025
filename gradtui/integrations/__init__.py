"""Callbacks for training frameworks; each module imports its framework lazily.

- `gradtui.integrations.lightning.GradTUICallback` for Lightning `Trainer(callbacks=[...])`
- `gradtui.integrations.huggingface.GradTUICallback` for Hugging Face `Trainer(callbacks=[...])`
"""
