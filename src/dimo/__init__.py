"""3DiMo: 3D-aware implicit motion control for view-adaptive human video generation."""

__version__ = "0.1.0"
