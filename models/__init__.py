from .sr_unet import SuperResolutionUNet, SuperResolutionUNetOutput
