"""How the model and the batch are split over processes: TP, PP (+ virtual), DP."""

from __future__ import annotations

from dataclasses import dataclass

from chatflow.config._fields import documented, flag, require
from chatflow.config.model import ModelConfig


@documented
@dataclass
class ParallelConfig:
    """Parallel layout. The data-parallel size is what is left: world / (TP x PP)."""

    tensor_model_parallel_size: int = flag("--tensor-model-parallel-size", 1)
    """Tensor-parallel size (splits heads and the MLP width; keep it within a node)."""
    pipeline_model_parallel_size: int = flag("--pipeline-model-parallel-size", 1)
    """Pipeline-parallel size (splits the layers into consecutive stages)."""
    virtual_pipeline_model_parallel_size: int | None = flag(
        "--num-virtual-stages-per-pipeline-rank", None
    )
    """Model chunks per pipeline rank for the interleaved 1F1B schedule; None disables it."""
    sequence_parallel: bool = flag("--sequence-parallel", False)
    """Shard norms/dropout activations along the sequence within the TP group (GPU + TE only)."""
    use_distributed_optimizer: bool = flag("--use-distributed-optimizer", False)
    """Shard fp32 main weights and Adam states over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = flag("--overlap-grad-reduce", False)
    """Overlap the data-parallel gradient reduction with the backward pass (GPU)."""
    overlap_param_gather: bool = flag("--overlap-param-gather", False)
    """Overlap the distributed optimizer's parameter all-gather with the next forward (GPU)."""

    def __post_init__(self) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and value > 0, name, f"must be a positive int, got {value!r}"
            )
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None:
            require(
                isinstance(vpp, int) and vpp >= 1,
                "virtual_pipeline_model_parallel_size",
                f"must be a positive int or None, got {vpp!r}",
            )
            if vpp == 1:  # one chunk per rank is the plain schedule
                self.virtual_pipeline_model_parallel_size = None
            else:
                require(
                    self.pipeline_model_parallel_size > 1,
                    "virtual_pipeline_model_parallel_size",
                    "needs pipeline_model_parallel_size > 1",
                )
        require(
            not self.sequence_parallel or self.tensor_model_parallel_size > 1,
            "sequence_parallel",
            "needs tensor_model_parallel_size > 1",
        )
        require(
            not self.overlap_param_gather or self.use_distributed_optimizer,
            "overlap_param_gather",
            "needs use_distributed_optimizer",
        )

    @property
    def model_parallel_size(self) -> int:
        """Processes holding one copy of the model (TP x PP)."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    @property
    def num_model_chunks(self) -> int:
        """Model chunks per pipeline rank (the virtual pipeline size, or 1)."""
        return self.virtual_pipeline_model_parallel_size or 1

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel size for ``world_size`` processes.

        Raises:
            ValueError: when the world size is not a multiple of TP x PP.
        """
        require(
            world_size > 0 and world_size % self.model_parallel_size == 0,
            "world_size",
            f"{world_size} processes are not divisible by tensor_model_parallel_size "
            f"({self.tensor_model_parallel_size}) x pipeline_model_parallel_size "
            f"({self.pipeline_model_parallel_size})",
        )
        return world_size // self.model_parallel_size

    def validate(self, model: ModelConfig, world_size: int | None = None) -> None:
        """Checks that ``model`` can be split this way (and over ``world_size`` processes).

        Raises:
            ValueError: naming the offending field.
        """
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        require(
            model.num_attention_heads % tp == 0,
            "tensor_model_parallel_size",
            f"num_attention_heads={model.num_attention_heads} is not divisible by "
            f"tensor_model_parallel_size={tp}",
        )
        require(
            model.num_query_groups % tp == 0,
            "tensor_model_parallel_size",
            f"num_query_groups={model.num_query_groups} is not divisible by "
            f"tensor_model_parallel_size={tp}",
        )
        require(
            model.ffn_hidden_size % tp == 0,
            "tensor_model_parallel_size",
            f"ffn_hidden_size={model.ffn_hidden_size} is not divisible by "
            f"tensor_model_parallel_size={tp}",
        )
        stages = pp * self.num_model_chunks
        require(
            model.num_layers % stages == 0,
            "pipeline_model_parallel_size",
            f"num_layers={model.num_layers} is not divisible by pipeline_model_parallel_size "
            f"({pp}) x virtual_pipeline_model_parallel_size ({self.num_model_chunks})",
        )
        if world_size is not None:
            self.data_parallel_size(world_size)
