"""Evaluation metrics (3DiMo Table 1): SSIM, PSNR, LPIPS, FID, FVD, and the registry the benchmark reads them
from. See docs/evaluation.md."""

from .common import MetricUnavailable, WeightsNotFound
from .metrics import WeightsConfig, fid, frechet_distance, fvd, lpips, psnr, ssim

__all__ = ["MetricUnavailable", "WeightsNotFound", "WeightsConfig", "ssim", "psnr", "lpips", "fid", "fvd",
           "frechet_distance"]
