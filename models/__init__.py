from .coupled_unet import CoupledUNet, CoupledUNetOutput
from .sr_unet import SuperResolutionUNet, SuperResolutionUNetOutput
