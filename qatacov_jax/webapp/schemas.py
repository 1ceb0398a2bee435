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
    checkpoint: str = Field(
        description="run (or export) directory of the infection model; empty when --blind"
    )
    engine: str = Field(
        description="what runs the models: 'jax' (trained runs, --checkpoint) or "
        "'onnxruntime' (an ONNX export, --model)"
    )
    models: dict[str, ModelInfo] = Field(
        description="'infection', 'lung' (with a lung model) and each candidate by name; "
        "empty when --blind (the infection model may be a candidate)"
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
    checkpoint: str = Field(
        description="the infection model's run (or export) directory; empty when --blind"
    )
    lung_checkpoint: str | None
    model: str = Field(
        description="the infection model's `ModelInfo.label`; not named when --blind"
    )
    checkpoint_step: int | None = Field(
        description="training step of its loaded checkpoint; null when --blind"
    )
    lung_model: str | None = Field(None, description="the lung model's label, with one only")
    analysed_at: str = Field(description="UTC time of the analysis (ISO 8601)")


# ------------------------------------------------------------------ annotation
# docs/annotation.md#the-web-api describes these bodies with examples.

OUTCOME_HELP = (
    "pick | correct | draw | no_infection | exclude | skip (infection); accept | reject | "
    "unsure | exclude | pick | correct | draw | skip (lung)"
)


class Progress(BaseModel):
    total: int
    done: int = Field(description="accepted or excluded images")
    pending: int = Field(description="open images (fewer votes than --votes)")
    adjudication: int = Field(0, description="images whose votes disagree, or unsure")
    excluded: int = 0
    next: str | None = Field(
        description="the first open image the asking annotator has neither decided nor "
        "skipped, then the ones they skipped; null when none is left"
    )


class SessionSettings(BaseModel):
    mode: str = Field(examples=["review", "live"])
    stage: str | None = Field(description="I or II (review), null for live annotation")
    target: str = Field(examples=["infection", "lung"])
    outcomes: list[str] = Field(description="the outcomes a decision may have here")
    votes: int = Field(description="final votes an image needs (--votes)")
    order: str = Field(examples=["disagreement", "entropy", "random", "name"])
    blind: bool
    reference: bool = Field(description="a reference (manual) mask is among the candidates")


class ItemSummary(BaseModel):
    key: str
    image: str
    state: str = Field(examples=["open", "accepted", "excluded", "adjudication"])
    votes_cast: int
    mine: str | None = Field(description="the asking annotator's latest outcome")


class Session(Progress):
    """`GET /api/annotate`: progress, the session's settings and (items=true) the job list."""

    settings: SessionSettings
    items: list[ItemSummary] | None = None


class DecisionRecord(BaseModel):
    """One line of annotations.jsonl as the API shows it (blind: the shown candidate name,
    no model name, run or path). Lines of older versions may lack fields."""

    model_config = ConfigDict(extra="allow")

    key: str
    image: str | None = None
    stage: str | None = None
    revision: int | None = None
    outcome: str | None = Field(None, description=OUTCOME_HELP)
    candidate: str | None = Field(None, description="the candidate as shown, or manual")
    annotator: str | None = None
    adjudicate: bool | None = None
    dice_candidate_vs_final: float | None = None
    mask_area_percent: float | None = None
    seconds: float | None = None
    note: str | None = None
    saved_at: str | None = None


class ImageStatus(BaseModel):
    state: str = Field(examples=["open", "accepted", "excluded", "adjudication"])
    outcome: str | None = Field(description="the settled outcome (accepted / excluded)")
    votes_needed: int
    votes_cast: int
    tally: dict[str, int] | None = Field(
        description="choice (a shown candidate, draw (annotator), no_infection, exclude, "
        "unsure) -> votes; once the image is no longer open, or always with --votes 1"
    )
    reason: str | None = Field(description="adjudication: tie, no majority or unsure")


class Candidate(BaseModel):
    name: str = Field(description="the model's name, manual, consensus; 'candidate A'.. blind")
    mask: str = Field(description=f"the mask (0/255), {PNG_URL}")
    overlay: str = Field(description=f"the mask tinted over the X-ray, {PNG_URL}")
    area_percent: float
    dice_with_models: float | None = Field(
        None, description="mean Dice with the models; null with a single model or blind"
    )
    probability: str | None = Field(
        None, description=f"the model's probabilities (16-bit in red + green), {PNG_URL}"
    )


class AnnotationItem(BaseModel):
    """An X-ray to decide, its candidates, its votes and what was decided so far."""

    key: str
    image: str = Field(description="the source file name (display only)")
    height: int
    width: int
    xray: str
    stage: str | None
    target: str
    candidates: list[Candidate]
    disagreement: str | None = Field(description=f"where the models disagree, {PNG_URL}")
    disagreement_percent: float | None
    revision: int = Field(description="final decisions so far; send it back with a decision")
    status: ImageStatus
    mask: str | None = Field(description="the accepted mask, or null")
    mine: DecisionRecord | None = Field(description="the asking annotator's latest decision")
    history: list[DecisionRecord] = Field(description="the decisions the asker may see")
    last: DecisionRecord | None
    progress: Progress


# Names and labels that end up in provenance files and on annotators' screens.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class DecisionRequest(BaseModel):
    """A decision on one image (docs/annotation.md#post-apiannotatekey-a-decision)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    annotator: str = Field(
        description="who decides: their latest decision is their vote (no control characters)",
        pattern=NO_CONTROL_CHARACTERS,
    )
    outcome: str | None = Field(None, description=OUTCOME_HELP)
    candidate: str | None = Field(None, description="the candidate's name as shown")
    mask: str | None = Field(None, description=f"the final mask, {PNG_URL}")
    revision: int | None = Field(None, ge=0, description="the image's revision when loaded")
    seconds: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="time spent on the image"
    )
    note: str | None = Field(None, max_length=1000)
    adjudicate: bool = Field(False, description="settle the image whatever the votes")
    source: str | None = Field(None, description="legacy name of `candidate`")
    no_infection: bool = Field(False, description="legacy: outcome no_infection")


class DecisionResponse(BaseModel):
    saved: DecisionRecord
    status: ImageStatus
    progress: Progress
    next: str | None = Field(description="the next image for this annotator")


class ReviewConfig(BaseModel):
    """`GET /api/config` of a review server (no model loaded; `/api/predict` is a 404)."""

    lung: bool = False
    annotate: bool = True
    review: bool = True
    candidates: list[str] = Field(description="candidate model names; empty when --blind")
    blind: bool
    threshold: float
    max_upload_mb: float
    models: dict[str, dict] = Field(default_factory=dict)
