"""The seed papers' systems that 3DiMo is compared against, built as trainable baselines (docs/baselines.md):
MTVCrafter's 4D motion tokenizer (`motion_tokenizer.py`, trained by `tokenizer_training.py`)."""
