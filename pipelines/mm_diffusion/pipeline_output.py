from dataclasses import dataclass
from typing import List, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class MMDiffusionPipelineOutput(BaseOutput):
    """
    Output of the joint audio-video pipeline.

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `List[List[PIL.Image.Image]]`):
            `[B, F, H, W, 3]` float 0..1 ("np"), `[B, F, 3, H, W]` float 0..1 ("pt"), one list of images per video
            ("pil"), or the raw model-space `[B, F, C, H, W]` ("latent").
        audio (`np.ndarray` or `torch.Tensor`): `[B, C, T]` float in [-1, 1] (numpy for "np", torch otherwise).
        frame_rate (`float`): frames per second of the video.
        sample_rate (`int`): audio samples per second.
    """

    frames: Union[np.ndarray, torch.Tensor, List[List[PIL.Image.Image]]]
    audio: Union[np.ndarray, torch.Tensor]
    frame_rate: float
    sample_rate: int


@dataclass
class MMDiffusionSRPipelineOutput(BaseOutput):
    """
    Output of the super-resolution pipeline.

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `List[List[PIL.Image.Image]]`):
            the upscaled videos: `[B, F, H, W, 3]` float 0..1 ("np"), `[B, F, 3, H, W]` float 0..1 ("pt"), one list
            of images per video ("pil"), or the raw model-space `[B, F, 3, H, W]`, not clipped ("latent").
    """

    frames: Union[np.ndarray, torch.Tensor, List[List[PIL.Image.Image]]]
