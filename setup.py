from setuptools import find_packages, setup

setup(
    name="vstar-jax",
    version="0.1.0",
    description="JAX/Flax training-free long text-to-video generation (VideoCrafter2/ModelScope, VSTAR TAR+VSP)",
    python_requires=">=3.10",
    packages=find_packages(include=["vstar_jax", "vstar_jax.*", "checkpoints_convert", "checkpoints_convert.*", "configs", "configs.*"]),
    include_package_data=True,
    package_data={"vstar_jax": ["assets/*", "assets/**/*"], "configs": ["*.py", "*.txt", "*.yaml"]},
    install_requires=[
        # lower bounds: the oldest versions CI has run (the code needs jax.shard_map(check_vma=),
        # jax.export with platforms=, orbax's current restore API); raise them when CI moves on
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "transformers",
        "einops",
        "ml-collections",
        "tensorflow-datasets",
        "numpy",
        "safetensors",
        "pyyaml",
        "tqdm",
        "imageio",
        "imageio-ffmpeg",
        "ftfy",
        "regex",
        "matplotlib",
        "pyarrow",
        "opencv-python-headless",
        # SCuts: PySceneDetect's AdaptiveDetector, pinned (metrics must not drift between versions).
        # The -headless build avoids a second, conflicting cv2 package.
        "scenedetect-headless==0.7.2",
        "ml_dtypes",
        "scipy",
    ],
    extras_require={
        # torch is not pinned (no single build fits every user). A plain `pip install torch` pulls the
        # multi-GB CUDA build on Linux: on a CPU machine install the CPU build first,
        #   pip install torch --index-url https://download.pytorch.org/whl/cpu
        # (on the project's machines: `pip install torch==2.13.0`, a local CPU wheel), then `.[convert]`.
        # diffusers (and transformers, already required) build the reference models for `vstar-jax verify`.
        "convert": ["torch>=2.1", "diffusers>=0.30"],
        "test": ["pytest", "pytest-xdist", "torch>=2.1", "diffusers>=0.30"],
    },
    entry_points={"console_scripts": ["vstar-jax=vstar_jax.cli:main"]},
)
