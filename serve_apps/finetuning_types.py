"""OpenAI's files and fine-tuning bodies, as ``/v1/files`` and ``/v1/fine_tuning/jobs`` answer
them (https://platform.openai.com/docs/api-reference/fine-tuning): what the ``openai``
client's ``files`` and ``fine_tuning.jobs`` read and send."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from maas.finetune.runs import JobEvent, TuningJob
from maas.finetune.uploads import FileRecord

Auto = Literal["auto"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"  # checked line by line before it is stored
    status_details: str | None = None

    @classmethod
    def of(cls, record: FileRecord) -> "FileObject":
        return cls(id=record.file_id, bytes=record.bytes, created_at=int(record.created_at),
                   expires_at=int(record.expires_at), filename=record.filename,
                   purpose=record.purpose, status_details=f"{record.rows} examples")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = Field("auto", description="passes over the training file; "
                                                     "auto: the recipe's")
    batch_size: int | Auto = Field("auto", description="examples per step over all workers")
    learning_rate_multiplier: float | Auto = Field(
        "auto", description="scales fine_tuning.recipe.lr; auto: 1")

    def values(self) -> tuple[int | None, int | None, float | None]:
        def given(value: Any) -> Any:
            return None if value == "auto" else value
        return (given(self.n_epochs), given(self.batch_size),
                given(self.learning_rate_multiplier))


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"] = Field(description="supervised: chat examples (the only one)")
    supervised: SupervisedIn | None = None


class JobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="a base model listed in fine_tuning.models")
    training_file: str = Field(min_length=1, description="an uploaded file's id")
    validation_file: str | None = Field(None, description="an uploaded file's id: scored "
                                                          "every epoch")
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,40}$",
                               description="part of the tuned model's name (no ':')")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, description="accepted; not stored")

    def hyper(self) -> HyperparametersIn:
        if self.method is not None and self.method.supervised is not None \
                and self.method.supervised.hyperparameters is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or HyperparametersIn()


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str  # the tenant
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    hyperparameters: JobHyperparameters
    training_file: str
    validation_file: str | None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None
    error: JobErrorOut | None
    seed: int
    user_provided_suffix: str | None
    method: dict[str, Any]

    @classmethod
    def of(cls, job: TuningJob) -> "FineTuningJob":
        hyper = JobHyperparameters(**job.hyperparameters.model_dump())
        return cls(id=job.job_id, created_at=int(job.created_at),
                   finished_at=int(job.finished_at) if job.finished_at else None,
                   model=job.base, fine_tuned_model=job.fine_tuned_model,
                   organization_id=job.tenant, status=job.status, hyperparameters=hyper,
                   training_file=job.training_file, validation_file=job.validation_file,
                   trained_tokens=job.trained_tokens, seed=job.seed,
                   error=JobErrorOut(**job.error.__dict__) if job.error else None,
                   user_provided_suffix=job.suffix,
                   method={"type": "supervised",
                           "supervised": {"hyperparameters": hyper.model_dump()}})


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None
    type: Literal["message", "metrics"]

    @classmethod
    def of(cls, event: JobEvent) -> "JobEventOut":
        return cls(id=f"ftevent-{event.event_id}", created_at=int(event.created_at),
                   level=event.level, message=event.message, data=event.data,
                   type="metrics" if event.data else "message")


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventOut]
    has_more: bool
