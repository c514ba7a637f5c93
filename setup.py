from setuptools import find_packages, setup

SUBPACKAGES = ("configs", "checkpoints_convert")  # as in vstar_jax/_source_tree.py

setup(
    name="vstar-jax",
    version="0.1.0",
    description="JAX/Flax training-free long text-to-video generation (VideoCrafter2/ModelScope, VSTAR TAR+VSP)",
    python_requires=">=3.11",  # jax, jaxlib, flax, orbax, numpy and scipy need 3.11
    # One top-level package, vstar_jax: the repository's configs/ and checkpoints_convert/ folders install as
    # vstar_jax.configs and vstar_jax.checkpoints_convert (vstar_jax/_source_tree.py maps them the same way
    # in a checkout on PYTHONPATH; tests/test_packaging.py checks both).
    packages=find_packages(include=["vstar_jax", "vstar_jax.*"])
    + [f"vstar_jax.{folder}{sub}" for folder in SUBPACKAGES for sub in ["", *("." + p for p in find_packages(folder))]],
    package_dir={f"vstar_jax.{folder}": folder for folder in SUBPACKAGES},
    include_package_data=True,
    package_data={"vstar_jax": ["assets/*", "assets/**/*"], "vstar_jax.configs": ["*.py", "*.txt", "*.yaml"]},
    # Lower bounds: the versions CI has run (`.ci/run` installs the newest; nothing older has been
    # tested), pinned in constraints-min.txt: `pip install -c constraints-min.txt -e ".[test]"` installs
    # exactly them. Raise both when CI moves on; lower one only after CI has run that version.
    # tests/test_dependencies.py keeps the two files in step and checks the installed versions.
    # The code needs a recent JAX (jax.shard_map(check_vma=), jax.export with platforms=; its private
    # internals are read in vstar_jax/jax_private.py only) and orbax's current restore API.
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "transformers>=5.25.0",
        "ml-collections>=1.1.0",
        "tensorflow-datasets>=4.9.10",
        "numpy>=2.4.6",
        "safetensors>=0.8.0",
        "pyyaml>=6.0.3",
        "tqdm>=4.70.1",
        "imageio>=2.38.2",
        "imageio-ffmpeg>=0.8.1",
        "ftfy>=6.3.1",
        "regex>=2026.5.9",
        "matplotlib>=3.11.2",
        "pyarrow>=26.0.1",
        "opencv-python-headless>=5.1.0.95",
        # SCuts: PySceneDetect's AdaptiveDetector, pinned (metrics must not drift between versions).
        # The -headless build avoids a second, conflicting cv2 package.
        "scenedetect-headless==0.7.2",
        "ml_dtypes>=0.7.0",
        "scipy>=1.17.1",
    ],
    extras_require={
        # torch is not pinned (no single build fits every user). A plain `pip install torch` pulls the
        # multi-GB CUDA build on Linux: on a CPU machine install the CPU build first,
        #   pip install torch --index-url https://download.pytorch.org/whl/cpu
        # (on the project's machines: `pip install torch==2.13.0`, a local CPU wheel), then `.[convert]`.
        # diffusers (and transformers, already required) build the reference models for `vstar-jax verify`.
        "convert": ["torch>=2.13.0", "diffusers>=0.42.1"],
        "test": ["pytest>=9.0.3", "pytest-xdist>=3.8.0", "torch>=2.13.0", "diffusers>=0.42.1"],
    },
    entry_points={"console_scripts": ["vstar-jax=vstar_jax.cli:main"]},
)
