"""Cloud film API bodies and answers."""

from pydantic import BaseModel, Field

from film import service


class ShareIn(BaseModel):
    days: float = Field(service.DEFAULT_DAYS, gt=0, le=service.MAX_DAYS, description="days until the link expires")
    together: list[str] = Field(default_factory=list, max_length=service.MAX_TOGETHER,
                                description="the same patient's other StudyInstanceUIDs, shared through the same link")


class ShareCreatedOut(BaseModel):
    id: int
    url: str
    pin: str
    expires_at: str
    study_instance_uid: str
    together: list[str] = []


class ShareOut(BaseModel):
    id: int
    study_instance_uid: str
    state: str
    created_at: str
    created_by: str
    expires_at: str
    revoked_at: str | None
    failed_attempts: int
    opened_count: int
    last_opened_at: str | None
    film_state: str
    film_url: str | None
