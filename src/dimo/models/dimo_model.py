"""The whole 3DiMo network: motion encoders + Wan generator + geometric decoder + text projection.

Batch contract for `training_losses` (all tensors on one device; F = (T-1)/4 + 1, h = H_video/8, w = W_video/8):
    target_latents     (B, 16, F, h, w)   normalised VAE latents of the supervision video (LatentCodec.encode)
    reference_latents  (B, 16, 1, h, w)   latent of the reference image (= target_latents[:, :, :1] when the
                                          reference is the first target frame), or (B, 16, F, h, w) Wan-I2V
                                          condition latents (LatentCodec.encode_reference_condition)
    text_embeddings    (B, L, text_in_dim) frozen text-encoder states, zeros at padding
    text_mask          (B, L) bool         (optional; default all True)
    driving_frames     (B, T, 3, H, W)     in [-1, 1], T = 1 + 4(F-1)
    hand_keypoints     (B, T, 2, 21, 3)    pixel (x, y, conf) of left/right hand in driving frames, or None
    wrist_keypoints    (B, T, 2, 3)        optional body wrists (x, y, conf) for the hand-crop fallback
    pose_targets       (B, T, P)           [body; left hand; right hand] rotations, root excluded (GeometricDecoder)
    pose_valid         (B, T) or (B, T, P) bool/float
    image_embeddings   (B, 257, 1280)      only for configs with image cross-attention (Wan2.1-I2V-14B)
"""

from __future__ import annotations

import copy
import json
import os

import torch
import torch.nn as nn
from einops import rearrange

from . import draws, lora
from .augment import DrivingAugment
from .configs import DimoConfig
from .configs import get as get_config
from .flow_matching import FlowMatching
from .generator import DimoWanTransformer
from .geometric_decoder import GeometricDecoder, masked_pose_loss
from .hand_crops import crop_hands
from .motion_encoder import MotionEncoder, PoseTokenizer
from .schedules import AnnealSchedule
from .text_encoder import TextProjection

CONFIG_NAME = "dimo_config.json"
LATENT_CHANNELS = 16
MASK_CHANNELS = 4  # Wan I2V: the 4 pixel frames of each latent frame, 1 = given (reference)


def _own_memory(module: nn.Module) -> None:
    """Give every loaded tensor memory of its own. Safetensors loads views into the file's buffer at arbitrary
    offsets, and CPU kernels take other vector paths on unaligned memory: a loaded model would then differ from
    the saved one in the last bit, and a registry round trip or a resume would not be exact."""
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.clone()
        for sub in module.modules():
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = b.clone()


class DimoModel(nn.Module):
    COMPONENTS = {"generator": DimoWanTransformer, "body_encoder": MotionEncoder, "hand_encoder": MotionEncoder,
                  "pose_tokenizer": PoseTokenizer, "geometric_decoder": GeometricDecoder,
                  "text_projection": TextProjection}

    def __init__(self, config: DimoConfig | str, generator: DimoWanTransformer | None = None):
        super().__init__()
        if isinstance(config, str):
            config = get_config(config)
        self.config = config
        if config.generator["num_motion_tokens"] != config.num_motion_tokens:
            raise ValueError(f"generator expects {config.generator['num_motion_tokens']} motion tokens per frame, "
                             f"encoders give {config.num_motion_tokens}")
        self.generator = generator if generator is not None else DimoWanTransformer(**config.generator)
        self.body_encoder = MotionEncoder(**config.body_encoder) if config.body_encoder else None
        self.hand_encoder = MotionEncoder(**config.hand_encoder) if config.hand_encoder else None
        self.pose_tokenizer = PoseTokenizer(**config.pose_tokenizer) if config.pose_tokenizer else None
        self.geometric_decoder = GeometricDecoder(**config.geometric_decoder) if config.geometric_decoder else None
        self.text_projection = TextProjection(config.text_in_dim, self.generator.config.text_dim)
        self.augment = DrivingAugment(config.augment)
        self.flow = FlowMatching(config.flow)
        self.geo_schedule = AnnealSchedule(**config.geo_schedule)

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_stock_pretrained(cls, config: DimoConfig | str, wan_path: str, subfolder: str | None = "transformer",
                              torch_dtype: torch.dtype | None = None) -> DimoModel:
        """Generator from a local stock Wan2.1 diffusers folder; encoders/decoder freshly initialised."""
        config = get_config(config) if isinstance(config, str) else copy.deepcopy(config)
        if subfolder and not os.path.isdir(os.path.join(wan_path, subfolder)):
            subfolder = None
        keys = ("in_channels", "motion_conditioning", "motion_token_dim", "num_motion_tokens", "motion_attention",
                "temporal_compression", "motion_channels")
        motion_args = {k: config.generator[k] for k in keys if k in config.generator}
        gen = DimoWanTransformer.from_stock_pretrained(wan_path, subfolder=subfolder, torch_dtype=torch_dtype,
                                                       **motion_args)
        config.generator = {k: (tuple(v) if isinstance(v, list) else v) for k, v in gen.config.items()
                            if not k.startswith("_")}
        return cls(config, generator=gen)

    def save_pretrained(self, directory: str, **kwargs) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            f.write(self.config.to_json())
        for name in self.COMPONENTS:
            part = getattr(self, name)
            if name == "generator" and lora.has_adapters(part):  # LoRA-trained: the merged weights, and the
                lora.save_adapter(part, os.path.join(directory, lora.ADAPTER_FOLDER))  # adapter alone for users
                part = lora.merged(part)
            if part is not None:
                part.save_pretrained(os.path.join(directory, name), **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str, torch_dtype: torch.dtype | None = None) -> DimoModel:
        with open(os.path.join(directory, CONFIG_NAME)) as f:
            config = DimoConfig.from_dict(json.load(f))
        model = cls(config, generator=DimoWanTransformer.from_pretrained(os.path.join(directory, "generator")))
        for name, klass in cls.COMPONENTS.items():
            if name != "generator" and getattr(model, name) is not None:
                setattr(model, name, klass.from_pretrained(os.path.join(directory, name)))
        _own_memory(model)
        return model.to(torch_dtype) if torch_dtype is not None else model

    def enable_gradient_checkpointing(self) -> None:
        for part in (self.generator, self.body_encoder, self.hand_encoder):
            if part is not None:
                part.enable_gradient_checkpointing()

    def trainable_parameters(self):
        """What trains: everything (the paper fine-tunes end to end), or with LoRA (`lora.add_adapters`) the
        adapters and all 3DiMo parts, the rest of the Wan DiT frozen."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ motion
    def encode_motion(self, driving_frames: torch.Tensor | None = None, hand_keypoints: torch.Tensor | None = None,
                      wrist_keypoints: torch.Tensor | None = None, pose: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """-> z (B, T, K_body + K_hand, D). Augmentations run only in train mode (identity in eval)."""
        if self.pose_tokenizer is not None:  # "w/ SMPL ctrl.": body pose only, as in the paper's ablation
            return self.pose_tokenizer(pose[..., : self.pose_tokenizer.config.pose_dim])
        # Hand crops are cut from the un-augmented frames (keypoints are in their pixel space); each stream then
        # gets its own clip-consistent augmentation.
        z = self.body_encoder(self.augment(driving_frames, generator))
        if self.hand_encoder is None:
            return z
        crops, _ = crop_hands(driving_frames, hand_keypoints, tuple(self.config.hand_crop_size), wrist_keypoints)
        B = crops.shape[0]
        crops = rearrange(crops, "b t v c h w -> (b v) t c h w")
        crops = rearrange(self.augment(crops, generator), "(b v) t c h w -> b t v c h w", b=B)
        return torch.cat([z, self.hand_encoder(crops)], dim=2)

    # ------------------------------------------------------------------ DiT input
    def dit_input(self, noisy_latents: torch.Tensor, reference_latents: torch.Tensor | None) -> torch.Tensor:
        """[noisy (16) | mask (4) | reference (16)] along channels (Wan2.1-I2V layout), or just the latents when the
        generator was configured without reference channels (in_channels == 16)."""
        extra = self.generator.config.in_channels - LATENT_CHANNELS
        if extra == 0:
            return noisy_latents
        if extra != MASK_CHANNELS + LATENT_CHANNELS or reference_latents is None:
            raise ValueError(f"generator in_channels={self.generator.config.in_channels} needs reference latents")
        B, _, F, h, w = noisy_latents.shape
        ref = reference_latents.to(noisy_latents.dtype)
        if ref.shape[2] == 1:  # "latent_pad": reference at latent frame 0, zeros elsewhere
            ref = torch.cat([ref, ref.new_zeros(B, LATENT_CHANNELS, F - 1, h, w)], dim=2)
        mask = noisy_latents.new_zeros(B, MASK_CHANNELS, F, h, w)
        mask[:, :, 0] = 1.0
        return torch.cat([noisy_latents, mask, ref], dim=1)

    def _text(self, embeddings: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.text_projection(embeddings, mask)

    def predict_velocity(self, noisy_latents, model_timestep, reference_latents, text, motion_tokens,
                         image_embeddings=None) -> torch.Tensor:
        """text: already projected (B, L, text_dim). model_timestep: (B,) in [0, 1000]. Latents may be fp32 under bf16
        weights (targets and noise stay fp32): they are cast where they meet the DiT."""
        x = self.dit_input(noisy_latents, reference_latents).to(self.generator.dtype)
        return self.generator(x, model_timestep, text,
                              motion_tokens=motion_tokens, encoder_hidden_states_image=image_embeddings).sample

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, step: int, generator: torch.Generator | None = None) -> dict:
        """The training objective; a DeepSpeed engine calls this (ZeRO-3 gathers parameters around forward)."""
        return self.training_losses(batch, step, generator=generator)

    def training_losses(self, batch: dict, step: int, generator: torch.Generator | None = None,
                        noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> dict:
        """-> {"loss", "diffusion_loss", "geometric_loss", "geometric_weight"} (scalars; "loss" = total).
        `noise` / `t` (in [0, 1]) override the random draws (tests, debugging)."""
        x0 = batch["target_latents"]
        B, device = x0.shape[0], x0.device
        cfg = self.config
        z = self.encode_motion(batch.get("driving_frames"), batch.get("hand_keypoints"),
                               batch.get("wrist_keypoints"), batch.get("pose_targets"), generator)

        geo_weight = self.geo_schedule.weight(step) if self.geometric_decoder is not None else 0.0
        if self.geometric_decoder is not None and batch.get("pose_targets") is not None:
            theta = self.geometric_decoder(z)
            valid = batch.get("pose_valid")  # per frame (B, T) or per entry (B, T, P), as the latent cache has it
            if valid is not None and valid.ndim == 3:
                valid = valid[..., : theta.shape[-1]]  # a body-only decoder (no hand encoder) drops the hand part
            geo_loss = masked_pose_loss(theta, batch["pose_targets"][..., : theta.shape[-1]], valid)
        else:
            geo_loss = x0.new_zeros((), dtype=torch.float32)

        # condition dropout for classifier-free guidance (text -> zeros, motion -> learned null tokens)
        drop_motion = draws.rand(B, generator, device) < cfg.p_drop_motion
        drop_text = draws.rand(B, generator, device) < cfg.p_drop_text
        text = self._text(batch["text_embeddings"], batch.get("text_mask"))
        text = text * (~drop_text).view(B, 1, 1).to(text.dtype)
        motion = self.generator.apply_motion_dropout(z, drop_motion)

        if t is None:
            t = self.flow.sample_t(B, device=device, generator=generator)
        if noise is None:
            noise = draws.randn(x0.shape, generator, device, x0.dtype)
        pred = self.predict_velocity(self.flow.noisy(x0, noise, t), self.flow.model_timestep(t),
                                     batch.get("reference_latents"), text, motion, batch.get("image_embeddings"))
        diffusion_loss = self.flow.loss(pred, self.flow.velocity_target(x0, noise))
        total = diffusion_loss + geo_weight * geo_loss if geo_weight > 0 else diffusion_loss
        return {"loss": total, "diffusion_loss": diffusion_loss, "geometric_loss": geo_loss,
                "geometric_weight": torch.tensor(geo_weight, device=device)}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_latents(self, reference_latents, motion_tokens, text_embeddings, text_mask=None,
                       negative_text_embeddings=None, latent_shape=None, num_steps: int = 30,
                       guidance_text: float = 5.0, guidance_motion: float = 1.0, image_embeddings=None,
                       generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
        """Euler flow sampling with compositional CFG:
        v = v(0, 0) + g_t [v(c, 0) - v(0, 0)] + g_m [v(c, m) - v(c, 0)]   (0 = null text / null motion).
        Branches whose guidance is 1 are skipped; all branches run as one batch."""
        B, T = motion_tokens.shape[:2]
        c = self.generator.config.temporal_compression
        if noise is None:
            shape = latent_shape or (B, LATENT_CHANNELS, (T - 1) // c + 1, *reference_latents.shape[-2:])
            noise = draws.randn(shape, generator, motion_tokens.device)
        text = self._text(text_embeddings, text_mask)
        null_text = (self._text(negative_text_embeddings, None) if negative_text_embeddings is not None
                     else torch.zeros_like(text))
        null_motion = self.generator.null_motion(B, T).to(motion_tokens.dtype)
        use_t, use_m = guidance_text != 1.0, guidance_motion != 1.0
        branches = [(text, motion_tokens)]
        if use_m:
            branches.append((text, null_motion))  # v(c, 0)
        if use_t:
            branches.append((null_text, null_motion if use_m else motion_tokens))  # v(0, 0) or v(0, m)
        n = len(branches)
        text_all = torch.cat([b[0] for b in branches])
        motion_all = torch.cat([b[1] for b in branches])
        ref_all = reference_latents.repeat(n, *([1] * (reference_latents.ndim - 1))) \
            if reference_latents is not None else None
        img_all = image_embeddings.repeat(n, 1, 1) if image_embeddings is not None else None

        def velocity(x, ts):
            v = self.predict_velocity(x.repeat(n, 1, 1, 1, 1), ts.repeat(n), ref_all, text_all, motion_all,
                                      img_all).chunk(n)
            if n == 1:
                return v[0]
            if use_t and use_m:
                return v[2] + guidance_text * (v[1] - v[2]) + guidance_motion * (v[0] - v[1])
            return v[1] + (guidance_text if use_t else guidance_motion) * (v[0] - v[1])

        return self.flow.sample(velocity, noise, num_steps)

    @torch.no_grad()
    def generate(self, codec, reference_image: torch.Tensor, driving_frames: torch.Tensor | None,
                 text_embeddings: torch.Tensor, text_mask: torch.Tensor | None = None,
                 negative_text_embeddings: torch.Tensor | None = None, hand_keypoints=None, wrist_keypoints=None,
                 pose=None, image_embeddings=None, num_steps: int = 30, guidance_text: float = 5.0,
                 guidance_motion: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """reference_image (B, 3, H, W) and driving_frames (B, T, 3, H', W') in [-1, 1] -> video (B, 3, T, H, W)
        in [-1, 1]. `codec` is a LatentCodec; the reference latent follows config.reference_condition."""
        was_training = self.training
        self.eval()
        try:
            z = self.encode_motion(driving_frames, hand_keypoints, wrist_keypoints, pose, generator)
            T = z.shape[1]
            if self.config.reference_condition == "wan_i2v":
                ref = codec.encode_reference_condition(reference_image, T)
            else:
                ref = codec.encode_image(reference_image)
            _, F, h, w = codec.latent_shape(T, *reference_image.shape[-2:])
            latents = self.sample_latents(ref, z, text_embeddings, text_mask, negative_text_embeddings,
                                          (reference_image.shape[0], LATENT_CHANNELS, F, h, w), num_steps,
                                          guidance_text, guidance_motion, image_embeddings, generator)
            return codec.decode(latents)
        finally:
            self.train(was_training)
