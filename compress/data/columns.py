"""Names and values that training batches carry beside the model inputs.

Example:
    >>> from compress.data.columns import EXAMPLE_ID, TEACHER_PREFIX, UNLABELLED
    >>> UNLABELLED, TEACHER_PREFIX + "input_ids", EXAMPLE_ID
    (-100, 'teacher_input_ids', 'example_id')
"""

from __future__ import annotations

UNLABELLED = -100  # label of transfer-set rows: the student learns them from the teacher only
TEACHER_PREFIX = "teacher_"
EXAMPLE_ID = "example_id"  # position of a training row in the train split: the teacher cache's key
