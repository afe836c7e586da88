"""The model contract, defined once for export/ (which writes it) and daemon/ (which checks it).

A model is an ONNX graph taking `image`, float32 [N, 1, 28, 28] with values in 0..1, ink = 1 on
background 0 (MNIST polarity), and returning `probs`, float32 [N, 10] softmax probabilities.
Digits are laid out the way MNIST was made: the ink's bounding box fitted into 20x20 keeping its
aspect ratio, anti-aliased, and placed in the 28x28 frame by its centre of mass.

Bump CONTRACT_VERSION whenever the layout changes: the daemon refuses a model whose metadata
names another version, so a retrained model and the preprocessing can never silently drift.
"""

from __future__ import annotations

CONTRACT_VERSION = "1"

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
IMAGE_SIZE = 28
DIGIT_BOX = 20
NUM_CLASSES = 10
DTYPE = "float32"

# Keys of the ONNX metadata_props the export writes and the daemon reads.
META_CONTRACT = "digit_inbox.contract_version"
META_MODEL_ID = "digit_inbox.model_id"
META_ARCH = "digit_inbox.architecture"
META_VAL_ACC = "digit_inbox.val_accuracy"
META_TEST_ACC = "digit_inbox.test_accuracy"
META_TRAIN_MD5 = "digit_inbox.train_data_md5"
META_CREATED = "digit_inbox.created"
META_GIT = "digit_inbox.git_commit"
