"""Every check of what a client asks for, in one place; each error names its parameter.

`video_request` turns a `POST /v1/videos` body into the engine's GenerationRequest,
`session_request` a realtime `session.start` message, `check_prompt` a `prompt.update`.
They check the model config's limits and the served model's rules (frame counts, sizes), so
a bad value is a 400 (or a websocket error message) whose `param` is the field, never a 500;
the engine's own `validate` runs last as a guard.
"""
from __future__ import annotations

import math
import re
import secrets
from typing import Optional

from sana_serve.engine.config import ModelConfig
from sana_serve.engine.rollout import FULL_SEQUENCE_ENDLESS, GenerationRequest, RequestRules
from sana_serve.server.schemas import APIError, CreateVideoRequest

SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
MAX_SEED = 2**63 - 1
# A prompt: not blank, no NUL (SQLite and C strings end there). Python's \s is str.strip()'s whitespace.
PROMPT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
NO_NUL_PATTERN = r"^[^\x00]*$"


def _frames(seconds: float, cfg: ModelConfig, rules: Optional[RequestRules]) -> int:
    return rules.total_frames(seconds) if rules is not None else round(seconds * cfg.video.fps)


def min_seconds(cfg: ModelConfig, rules: Optional[RequestRules]) -> float:
    """The exclusive lower bound of `seconds`: shorter videos round to no frame at all (a causal
    VAE's first frame stands alone, so with one any positive length makes a frame)."""
    if rules is not None and rules.first_frame_alone:
        return 0.0
    return 0.5 / cfg.video.fps  # round(seconds * fps) >= 1


def seconds_pattern(cfg: ModelConfig, rules: Optional[RequestRules]) -> str:
    """`seconds` as a string (the openai SDK sends "4"): a decimal with at most two digits after
    the point, that makes at least one frame and is at most the model's max_seconds. The server
    accepts exactly these strings, so the OpenAPI document can say so."""
    top = int(round(cfg.limits.max_seconds * 100))  # in hundredths

    def fractions(lo: int, hi: int) -> str:  # hundredths lo..hi of one second, as ".d" / ".dd" (or none for 0)
        alts = []
        for h in range(lo, hi + 1):
            alts += [""] if h == 0 else []
            alts += [rf"\.{h // 10}" + ("0?" if h % 10 == 0 else str(h % 10))] if h else [r"\.00?"]
        return "(?:" + "|".join(alts) + ")"

    first = next((h for h in range(1, 100) if _frames(h / 100, cfg, rules) >= 1), 100)
    whole, last = divmod(top, 100)
    alternatives = [f"0{fractions(first, 99 if whole else last)}"] if first <= (99 if whole else last) else []
    if whole > 1:  # 1 .. whole-1 with any fraction
        alternatives.append("(?:" + "|".join(str(i) for i in range(1, whole)) + r")(?:\.[0-9]{1,2})?")
    if whole >= 1:
        alternatives.append(f"{whole}{fractions(0, last)}")
    return "^(?:" + "|".join(alternatives) + ")$"


def parse_seconds(value, cfg: ModelConfig, rules: Optional[RequestRules]) -> float:
    """A number, or a string matching `seconds_pattern`, -> float; else ValueError."""
    if isinstance(value, bool):
        raise ValueError("seconds must be a number")
    if isinstance(value, str):
        if not re.fullmatch(seconds_pattern(cfg, rules), value):
            raise ValueError(f"seconds must be a positive number of at most {cfg.limits.max_seconds:g} with at most "
                             f"two decimals that makes at least one frame, got {value[:40]!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError("seconds must be a finite number")
    return value


def invalid(param: Optional[str], message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' -> (width, height); ValueError if it is not one."""
    m = SIZE.fullmatch(size)
    if m is None:
        raise ValueError(f"size must be 'WIDTHxHEIGHT', got {size[:40]!r}")
    return int(m[1]), int(m[2])


def check_prompt(prompt, cfg: ModelConfig, param: str = "prompt", required: bool = True) -> str:
    lim = cfg.limits
    if not isinstance(prompt, str):
        raise invalid(param, f"{param} must be a string")
    if required and not prompt.strip():
        raise invalid(param, f"{param} must be a non-empty string")
    if "\x00" in prompt:
        raise invalid(param, f"{param} must not contain NUL characters")
    if len(prompt) > lim.max_prompt_chars:
        raise invalid(param, f"{param} is {len(prompt)} characters; the limit is {lim.max_prompt_chars}")
    return prompt


def _check_sampling(steps, guidance, seed, cfg: ModelConfig) -> None:
    lim = cfg.limits
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or not 1 <= steps <= lim.max_steps):
        raise invalid("num_inference_steps", f"num_inference_steps must be an integer between 1 and "
                                             f"{lim.max_steps}, got {steps!r}")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance)
                                 or not lim.min_guidance <= guidance <= lim.max_guidance):
        raise invalid("guidance_scale", f"guidance_scale must be a number between {lim.min_guidance:g} and "
                                        f"{lim.max_guidance:g}, got {guidance!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise invalid("seed", "seed must be a non-negative integer")


def _engine_check(request: GenerationRequest, rules: RequestRules) -> None:
    """The engine's own checks, after ours: anything it still refuses is a 400 too."""
    try:
        rules.validate(request)
    except ValueError as e:
        raise invalid(None, str(e)) from None


def video_request(body: CreateVideoRequest, cfg: ModelConfig, rules: RequestRules,
                  default_seconds: float) -> GenerationRequest:
    """A create request checked against the served model -> the request the engine runs
    (exact `frames`, parsed size, a seed drawn when none was given)."""
    lim, video = cfg.limits, cfg.video
    check_prompt(body.prompt, cfg)
    check_prompt(body.negative_prompt, cfg, "negative_prompt", required=False)
    if body.model is not None and body.model != cfg.name:
        raise invalid("model", f"model {body.model[:80]!r} is not served here; this server serves {cfg.name!r}",
                      "model_not_found")
    if body.fps is not None and body.fps != video.fps:
        raise invalid("fps", f"fps must be {video.fps} for model {cfg.name!r}, got {body.fps}")
    max_frames = int(lim.max_seconds * video.fps)
    if body.frames is not None:
        if body.seconds is not None:
            raise invalid("frames", "give seconds or frames, not both")
        frames = body.frames
        if not 1 <= frames <= max_frames:
            raise invalid("frames", f"frames must be between 1 and {max_frames} for this model, got {frames}")
        if not rules.valid_frames(frames):
            raise invalid("frames", f"frames must be {rules.frame_rule()}; got {frames}")
        seconds = frames / video.fps
    else:
        try:
            seconds = default_seconds if body.seconds is None else parse_seconds(body.seconds, cfg, rules)
        except (ValueError, TypeError, OverflowError) as e:
            raise invalid("seconds", str(e)) from None
        if seconds <= 0:
            raise invalid("seconds", f"seconds must be positive, got {seconds:g}")
        if seconds > lim.max_seconds:
            raise invalid("seconds", f"seconds must be at most {lim.max_seconds:g} for this model, got {seconds:g}")
        frames = rules.total_frames(seconds)
        if frames < 1:
            raise invalid("seconds", f"seconds={seconds:g} is shorter than one frame at {video.fps} fps")
    width, height = video.width, video.height
    if body.size is not None:  # which sizes the model serves is the engine's to say (its checkpoint's bins)
        try:
            width, height = parse_size(body.size)
            rules.check_size(width, height)
        except ValueError as e:
            raise invalid("size", str(e)) from None
    _check_sampling(body.num_inference_steps, body.guidance_scale, body.seed, cfg)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    request = GenerationRequest(body.prompt, seconds, seed, body.negative_prompt, body.num_inference_steps,
                                body.guidance_scale, frames=frames, width=width, height=height)
    _engine_check(request, rules)
    return request


def session_request(msg: dict, cfg: ModelConfig, rules: RequestRules) -> GenerationRequest:
    """A realtime `session.start` message -> an endless request."""
    prompt = check_prompt(msg.get("prompt"), cfg)
    negative = check_prompt(msg.get("negative_prompt") or "", cfg, "negative_prompt", required=False)
    steps, guidance, seed = msg.get("num_inference_steps"), msg.get("guidance_scale"), msg.get("seed")
    _check_sampling(steps, guidance, seed, cfg)
    if rules.mode == "full_sequence":
        raise invalid(None, FULL_SEQUENCE_ENDLESS)
    seed = seed if seed is not None else secrets.randbelow(2**31)
    request = GenerationRequest(prompt, None, seed, negative, steps, None if guidance is None else float(guidance))
    _engine_check(request, rules)
    return request
