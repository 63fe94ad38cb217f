"""Network configurations of released diffusion checkpoints, as data (no torch: the config checks of
the Snakemake process read them, and dra.diffusion.checkpoint builds the canary's random EDM from
them). A module of the lowest layer, so that dra.config does not import the diffusion package."""

#: NVIDIA's class-conditional CIFAR-10 EDM (edm-cifar10-32x32-cond-vp): the 'ddpmpp' preset of
#: NVlabs/edm train.py with the CIFAR-10 options (dropout 0.13, augment_dim 9), 55.7M parameters.
#: The canary builds it randomly initialised (dra.canary); real runs read it from the checkpoint.
EDM_CIFAR10_DDPMPP: dict = dict(
    img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, model_type="SongUNet", model_channels=128,
    channel_mult=[2, 2, 2], channel_mult_noise=1, resample_filter=[1, 1], embedding_type="positional",
    encoder_type="standard", decoder_type="standard", num_blocks=4, attn_resolutions=[16], dropout=0.13)
