"""The model contract, defined once for export/ (which writes it) and daemon/ (which checks it).

A model is an ONNX graph taking `image`, float32 [N, 1, 28, 28] with values in 0..1, ink = 1 on
background 0 (MNIST polarity), and returning `probs`, float32 [N, 10] softmax probabilities.
Digits are laid out the way MNIST was made: the ink's bounding box fitted into 20x20 keeping its
aspect ratio, anti-aliased, and placed in the 28x28 frame by its centre of mass.

Bump CONTRACT_VERSION whenever the layout changes: the daemon refuses a model whose metadata
names another version, so a retrained model and the preprocessing can never silently drift.
"""

from __future__ import annotations

CONTRACT_VERSION = "2"

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
IMAGE_SIZE = 28
DIGIT_BOX = 20
NUM_DIGITS = 10
NOT_ONE_DIGIT = 10  # the last class: ink that is not one digit (digits touching)
NUM_CLASSES = NUM_DIGITS + 1
DTYPE = "float32"

# Below this calibrated confidence a reading goes to review. Chosen from the shipped model's
# risk-coverage table (`digit-inbox evaluate`, see the model card): at 0.99 about 1-2.5 % of
# files go to review and 1-2 in 1,000 filed files are wrong on MNIST test, varied scans and USPS,
# against 1.3-5.6 in 1,000 at the earlier default of 0.6 with uncalibrated confidence.
DEFAULT_MIN_CONFIDENCE = 0.99

# Keys of the ONNX metadata_props the export writes and the daemon reads.
META_CONTRACT = "digit_inbox.contract_version"
META_MODEL_ID = "digit_inbox.model_id"
META_ARCH = "digit_inbox.architecture"
META_VAL_ACC = "digit_inbox.val_accuracy"
META_TEST_ACC = "digit_inbox.test_accuracy"
META_TRAIN_MD5 = "digit_inbox.train_data_md5"
# The softmax temperature fitted on the validation split (inside the graph) and the calibration
# error (10 bins) it leaves there.
META_TEMPERATURE = "digit_inbox.temperature"
META_VAL_ECE = "digit_inbox.val_ece"
META_CREATED = "digit_inbox.created"
META_GIT = "digit_inbox.git_commit"
