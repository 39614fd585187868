"""Three-stage 3DiMo training over a DeepSpeed engine (paper Sec. 3.3, supplementary E)."""
