"""The frozen diffusion backbone of PathSegDiff: a VQ autoencoder and a conditional UNet (diffusers), conditioned on
a self-supervised patch embedding (HIPT ViT-S/16, pure torch) projected to a 2-token cross-attention context."""
