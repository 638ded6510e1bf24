"""Models: MoCo-v2 with the geo head, shuffle-BN, SimCLR, ResNet backbones and the method registry."""
