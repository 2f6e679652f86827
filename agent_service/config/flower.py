"""Flower: the Celery monitor `python cli.py flower` starts."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator


class FlowerSettings(BaseModel):
    """Flower: Celery's web monitor. These names are Flower's own environment options too, so Flower reads the
    same values."""

    flower_address: str = Field("127.0.0.1", description="beyond loopback, Flower requires FLOWER_BASIC_AUTH")
    flower_port: int = Field(5555, ge=1, le=65535, description="the port Flower listens on")
    flower_basic_auth: SecretStr | None = Field(None, description="Flower's logins: user:password[,user:password]")

    @field_validator("flower_basic_auth")
    @classmethod
    def _logins_have_user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        logins = value.get_secret_value().split(",") if value is not None else []
        if not all(user and password for user, _, password in (login.partition(":") for login in logins)):
            raise ValueError("FLOWER_BASIC_AUTH must be user:password, or several separated by commas")
        return value
