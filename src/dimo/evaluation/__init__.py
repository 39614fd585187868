"""Evaluation metrics (3DiMo Table 1): SSIM, PSNR, LPIPS, FID, FVD. See docs/evaluation.md."""

from .common import MetricUnavailable, WeightsNotFound
from .metrics import (WeightsConfig, compute_all, fid, frechet_distance, fvd, lpips, psnr, split_results, ssim)

__all__ = ["MetricUnavailable", "WeightsNotFound", "WeightsConfig", "compute_all", "split_results", "ssim", "psnr",
           "lpips", "fid", "fvd", "frechet_distance"]
