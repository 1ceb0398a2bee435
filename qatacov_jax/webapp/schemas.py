"""The JSON bodies of the web app's API, as pydantic models (served as `/openapi.json`).

Response models describe what the routes answer; fields that a response leaves out (the
lung fields without a lung model) have defaults, and the routes answer with
`response_model_exclude_unset=True` so that absent fields stay absent rather than turning
into nulls. Non-finite floats (a Dice with no other model) serialize as null.
Images travel as `data:image/png;base64,...` URLs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PNG_URL = "a data:image/png;base64,... URL"


class ErrorResponse(BaseModel):
    """Every refused request: a 4xx status and what is wrong and what to do."""

    error: str = Field(examples=["no image 'x' in the --annotate folder"])


# ------------------------------------------------------------------ demo


class SeverityScaleInfo(BaseModel):
    bounds: list[float] = Field(description="inclusive upper bounds (% of lung) of each grade")
    names: list[str] = Field(description="one name per grade (len(bounds) + 1)")


class ModelInfo(BaseModel):
    """A served model as its run directory describes it (`modelinfo.describe_run`)."""

    label: str = Field(
        description="one line for people",
        examples=[
            "U-Net++ · DenseNet-121 · fold 0 · best checkpoint, step 1200 · validation Dice 0.781"
        ],
    )
    architecture: str | None
    encoder: str | None
    frozen: bool | None
    fold: int | None
    target: str | None = Field(description="what it segments: infection or lung")
    checkpoint: str = Field(description="best or latest (--which)")
    step: int | None = Field(description="training step of the loaded checkpoint")
    metric: str | None = Field(description="the validation metric the run was selected on")
    score: float | None = Field(description="its value at the loaded checkpoint")


class ConfigResponse(BaseModel):
    """What the page needs to know: modes, limits and the server's thresholds."""

    lung: bool = Field(description="a lung model is loaded (severity is reported)")
    annotate: bool = Field(description="annotation mode is on")
    candidates: list[str] = Field(description="candidate model names; empty when --blind")
    blind: bool
    threshold: float = Field(
        description="the operating point (--threshold) the decision is made at; the page "
        "marks it on its slider"
    )
    lung_threshold: float
    display_floor: float
    max_upload_mb: float
    severity_scale: SeverityScaleInfo
    checkpoint: str = Field(description="run directory of the infection model")
    models: dict[str, ModelInfo] = Field(
        description="'infection', 'lung' (with a lung model) and each candidate by name "
        "(not when --blind)"
    )


class PredictResponse(BaseModel):
    """`scripts/infer.py`'s report fields for the upload (same names and values), its
    images as PNG data URLs, and the settings they were made with."""

    intensity: str = Field(description="how the file's values were mapped to [0, 1]")
    file: str = Field(description="the client's file name (display only)")
    dicom: dict[str, str] = Field(
        default_factory=dict,
        description="patient and study identifiers of a DICOM upload that are present "
        "(patient_id, patient_name, study_date, accession_number, study_description)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="why the upload does not look like a chest X-ray (`plausibility`); when "
        "any, `decision` withholds the COVID-19 decision",
    )
    decision: str = Field(
        description="the decision in words at `threshold`, or why there is none",
        examples=["COVID-19 detected", "No COVID-19 detected", "not assessed"],
    )
    status: str = Field(examples=["ok"])
    error: str
    height: int
    width: int
    covid19: bool
    max_probability: float
    infected_percent_of_image: float
    lung_percent_of_image: float | None = Field(None, description="with a lung model only")
    infected_percent_of_lung: float | None = Field(None, description="with a lung model only")
    severity_grade: int | None = Field(None, description="with a lung model only; -1 unknown")
    severity: str | None = Field(None, description="with a lung model only")
    map: str = Field(description=f"the infection map, {PNG_URL}")
    mask: str = Field(description=f"the binary infection mask (0/255), {PNG_URL}")
    lung_mask: str | None = Field(None, description=f"with a lung model only, {PNG_URL}")
    xray: str = Field(description=f"the X-ray as the browser can show it (8-bit), {PNG_URL}")
    xray16: str | None = Field(
        None,
        description="only for sources deeper than 8 bits: the X-ray as 16-bit fixed point, "
        f"encoded as `probability` (for window/level on the page), {PNG_URL}",
    )
    probability: str = Field(
        description="probabilities as 16-bit fixed point in red (high) + green (low) of an RGB "
        f"PNG, {PNG_URL}"
    )
    threshold: float
    lung_threshold: float | None
    display_floor: float
    checkpoint: str
    lung_checkpoint: str | None
    model: str = Field(description="the infection model's `ModelInfo.label`")
    checkpoint_step: int | None = Field(description="training step of its loaded checkpoint")
    lung_model: str | None = Field(None, description="the lung model's label, with one only")
    analysed_at: str = Field(description="UTC time of the analysis (ISO 8601)")


# ------------------------------------------------------------------ annotation


class Progress(BaseModel):
    total: int
    done: int
    pending: int
    next: str | None = Field(description="the first image without an accepted mask")


class ProvenanceRecord(BaseModel):
    """One line of annotations.jsonl. Lines written by older versions may lack fields;
    fields this model does not name are passed through."""

    model_config = ConfigDict(extra="allow")

    key: str
    image: str | None = None
    source: str | None = None
    revision: int | None = None
    decision: str | None = Field(None, examples=["mask", "no_infection"])
    chosen: str | None = Field(None, description="the model whose mask was chosen, or manual")
    dice_chosen_vs_final: float | None = None
    mask_area_percent: float | None = None
    seconds: float | None = None
    annotator: str | None = None
    saved_at: str | None = None
    files: list[str] | None = None
    replaced: list[str] | None = None


class Candidate(BaseModel):
    name: str = Field(description="the model's name, 'candidate A'.. when blind, or consensus")
    mask: str = Field(description=f"the mask (0/255), {PNG_URL}")
    overlay: str = Field(description=f"the mask tinted over the X-ray, {PNG_URL}")
    area_percent: float
    dice_with_models: float | None = Field(
        description="mean Dice with the other models; null with a single model"
    )


class AnnotationItem(BaseModel):
    """An X-ray to annotate, its candidate masks and what was saved for it so far."""

    key: str
    image: str = Field(description="the source file, relative to the --annotate folder")
    height: int
    width: int
    xray: str
    candidates: list[Candidate] = Field(description="models first, then the consensus")
    disagreement: str = Field(description=f"where the models disagree, {PNG_URL}")
    disagreement_percent: float
    revision: int = Field(description="saves so far; a save names the revision it started from")
    mask: str | None = Field(description="the accepted mask, or null before the first save")
    last: ProvenanceRecord | None
    progress: Progress


class SaveRequest(BaseModel):
    """An accepted mask: `mask`, or `no_infection: true` to file the X-ray as a control."""

    model_config = ConfigDict(strict=True, extra="forbid")

    revision: int = Field(description="the revision the image was loaded at")
    source: str | None = Field(
        None, description="the candidate the mask started from (as shown), or manual"
    )
    no_infection: bool = False
    mask: str | None = Field(None, description=f"the final mask, {PNG_URL}")
    seconds: float | None = Field(None, description="time spent on the image")
    annotator: str | None = Field(None, description="who saved (first 100 characters kept)")


class SaveResponse(BaseModel):
    saved: ProvenanceRecord
    progress: Progress
