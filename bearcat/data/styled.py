"""A few more ways to vary generated captchas than the `captcha` library's defaults
(`dataset.style`): glyph rotation range, one colour per character, pastel glyphs, dot and
line noise.

Used for broad "pretraining" sets (experiment=pretrain_generated) whose model is then
fine-tuned on a small labelled set of real captchas. Every random draw goes through
`captcha.image.secrets`, which `sources._generate_one` seeds, so images stay reproducible.
"""
from __future__ import annotations

import math

import captcha.image as captcha_image
from captcha.image import ImageCaptcha

# Keys of `dataset.style` and their defaults (the library's own look).
STYLE_DEFAULTS = {
    "rotation": 30,          # glyphs turn by up to +- this many degrees
    "char_colors": False,    # true: every character its own colour (else one per image)
    "color_range": [10, 200],  # text colour channels are drawn from this range (0-255)
    "pale_fraction": 0.0,    # share of glyph colours drawn as pastels close to white instead
    "pale_mix": [0.12, 0.4],  # how much colour a pastel keeps (the rest is white)
    "noise_dots": 30,        # thick dots in the text colour
    "noise_curves": 1,       # arcs in the text colour
    "noise_lines": 0,        # short dark straight strokes
    "line_length": [4, 14],  # their length range, pixels
}


def style_settings(style: dict | None) -> dict | None:
    """Checked style settings (None = the library's look); unknown keys are refused."""
    if not style:
        return None
    unknown = set(style) - set(STYLE_DEFAULTS)
    if unknown:
        raise ValueError(f"dataset.style: unknown keys {sorted(unknown)}; known: {sorted(STYLE_DEFAULTS)}")
    out = {**STYLE_DEFAULTS, **dict(style)}
    low, high = (int(v) for v in out["color_range"])
    if not 0 <= low <= high <= 255:
        raise ValueError(f"dataset.style.color_range={out['color_range']}: need 0 <= low <= high <= 255")
    out["color_range"] = [low, high]
    out["line_length"] = [int(v) for v in out["line_length"]]
    out["pale_fraction"] = float(out["pale_fraction"])
    if not 0.0 <= out["pale_fraction"] <= 1.0:
        raise ValueError(f"dataset.style.pale_fraction={out['pale_fraction']}: need a share between 0 and 1")
    low, high = (float(v) for v in out["pale_mix"])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"dataset.style.pale_mix={out['pale_mix']}: need 0 < low <= high <= 1")
    out["pale_mix"] = [low, high]
    return out


class StyledCaptcha(ImageCaptcha):
    """ImageCaptcha with the `STYLE_DEFAULTS` knobs."""

    def __init__(self, width: int, height: int, fonts=None, font_sizes=None, style: dict | None = None):
        super().__init__(width=width, height=height, fonts=fonts, font_sizes=font_sizes)
        self.style = style_settings(style) or dict(STYLE_DEFAULTS)
        angle = float(self.style["rotation"])
        self.character_rotate = (-angle, angle)

    def _text_color(self):
        rng = captcha_image.secrets
        low, high = self.style["color_range"]
        color = captcha_image.random_color(low, high, rng.randbelow(36) + 220)
        # Real sets draw some glyphs in pastels a few levels off the white background (luma
        # 228-242 on swust_cas_20191218); color_range alone almost never does. The extra draw
        # happens only when asked, so sets without pastels keep their images.
        if self.style["pale_fraction"] > 0 and rng.randbelow(10_000) < self.style["pale_fraction"] * 10_000:
            low_mix, high_mix = self.style["pale_mix"]
            mix = low_mix + (high_mix - low_mix) * rng.randbelow(1001) / 1000
            hue = captcha_image.random_color(0, 255)
            color = (*(round(255 - mix * (255 - c)) for c in hue), color[3])
        return color

    def _draw_character(self, c, draw, color):
        if self.style["char_colors"] and c != " ":
            color = self._text_color()
        return super()._draw_character(c, draw, color)

    def create_noise_dots(self, image, color, width: int = 3, number: int = 30):
        super().create_noise_dots(image, color, width, int(self.style["noise_dots"]))
        for _ in range(int(self.style["noise_curves"]) - 1):  # the library draws the first one
            self.create_noise_curve(image, color)
        self._noise_lines(image)
        return image

    def _noise_lines(self, image):
        rng = captcha_image.secrets
        draw = captcha_image.Draw(image)
        w, h = image.size
        short, long_ = self.style["line_length"]
        for _ in range(int(self.style["noise_lines"])):
            x, y = rng.randbelow(w), rng.randbelow(h)
            length = short + rng.randbelow(max(1, long_ - short + 1))
            angle = rng.randbelow(360) * math.pi / 180.0
            shade = rng.randbelow(80)
            draw.line(((x, y), (x + length * math.cos(angle), y + length * math.sin(angle))),
                      fill=(shade, shade, shade), width=1)

    def generate_image(self, chars, bg_color=None, fg_color=None):
        if fg_color is None:
            fg_color = self._text_color()
        return super().generate_image(chars, bg_color=bg_color, fg_color=fg_color)
