"""The task machinery every method shares: the task state, task-aware
layers (convolutions, linear layers, attention; frozen ones too), per-task
normalization and heads, the multi-head and task-aware
models, the strategy they train with, the cache of frozen tasks' weights,
task files and task stores, and the entropy coding of their packed codes
at rest."""

from piggyback_avalanche.task_aware.backbone_conversion import SHARED_EMBEDDINGS, find_classifier
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout, CodingError, decode_codes, encode_codes
from piggyback_avalanche.task_aware.experiences import experience_task_classes
from piggyback_avalanche.task_aware.feature_statistics import TaskFeatureStatistics
from piggyback_avalanche.task_aware.frozen_weight_cache import DEFAULT_BUDGET_BYTES, FrozenWeightCache
from piggyback_avalanche.task_aware.models import MultiHeadModel, TaskAwareModel
from piggyback_avalanche.task_aware.shared_layers import SHARED_LAYER_TYPES, SharedLayer
from piggyback_avalanche.task_aware.strategy import (
    DEFAULT_EVAL_MB_SIZE,
    DEFAULT_LR,
    DEFAULT_TRAIN_EPOCHS,
    DEFAULT_TRAIN_MB_SIZE,
    MaskScoreStrategy,
    NonFiniteLossError,
    OneRateStrategy,
    OptimizerFactory,
    TaskAwareStrategy,
    TaskOutOfMemoryError,
)
from piggyback_avalanche.task_aware.task_attention import ATTENTION_TYPES, TaskMultiheadAttention, TaskWindowAttention
from piggyback_avalanche.task_aware.task_files import TaskFileError, backbone_fingerprint
from piggyback_avalanche.task_aware.task_heads import MASKED_LOGIT, ClassifierHead, TaskHeads
from piggyback_avalanche.task_aware.task_inference import InferredTasks, TaskInference
from piggyback_avalanche.task_aware.task_layers import SUPPORTED_LAYER_TYPES, TaskWeightLayer, task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskModule, TaskTensorDict, TensorSpec
from piggyback_avalanche.task_aware.task_norm import NORM_LAYER_TYPES, TaskNorm
from piggyback_avalanche.task_aware.task_scores import TASK_SCORES, TaskScore
from piggyback_avalanche.task_aware.task_state import TaskState, task_key
from piggyback_avalanche.task_aware.task_store import TaskStore, TaskStoreError

__all__ = [
    "TaskState",
    "TaskTensorDict",
    "TaskModule",
    "TensorSpec",
    "task_key",
    "TaskWeightLayer",
    "task_layer_types",
    "SUPPORTED_LAYER_TYPES",
    "TaskNorm",
    "NORM_LAYER_TYPES",
    "TaskMultiheadAttention",
    "TaskWindowAttention",
    "ATTENTION_TYPES",
    "SHARED_EMBEDDINGS",
    "find_classifier",
    "SharedLayer",
    "SHARED_LAYER_TYPES",
    "ClassifierHead",
    "TaskHeads",
    "MASKED_LOGIT",
    "MultiHeadModel",
    "TaskAwareModel",
    "TaskInference",
    "InferredTasks",
    "TaskScore",
    "TASK_SCORES",
    "TaskFeatureStatistics",
    "TaskFileError",
    "backbone_fingerprint",
    "TaskStore",
    "TaskStoreError",
    "FrozenWeightCache",
    "DEFAULT_BUDGET_BYTES",
    "CodeLayout",
    "CodingError",
    "encode_codes",
    "decode_codes",
    "experience_task_classes",
    "TaskAwareStrategy",
    "OneRateStrategy",
    "MaskScoreStrategy",
    "OptimizerFactory",
    "NonFiniteLossError",
    "TaskOutOfMemoryError",
    "DEFAULT_LR",
    "DEFAULT_TRAIN_EPOCHS",
    "DEFAULT_TRAIN_MB_SIZE",
    "DEFAULT_EVAL_MB_SIZE",
]
