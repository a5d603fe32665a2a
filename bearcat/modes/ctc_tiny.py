"""CTC tiny: CTC with a set maximum length and a small, fast head for small machines.

The columns are projected (as in `ctc`), average-pooled to a short sequence of at least
`time_steps` steps, then read by a few 1-D convolutions instead of a recurrent layer: no
sequential computation, so it trains faster (1.2x `ctc`'s images/s on the default task).
Labels, loss and decoding are CTC's (class 0 is the blank).

Confidence rule: as `ctc`, the probability of the decoded text over all alignments.
"""
from __future__ import annotations

from bearcat.modes.base import Mode
from bearcat.modes.ctc import CTCMode, check_decoder, sequence_features


class CTCTinyMode(CTCMode):
    name = "ctc_tiny"

    # Keyword defaults are conf/mode/ctc_tiny.yaml's (max_length excepted: callers give it).
    def __init__(self, vocab, max_length, time_steps: int = 16, units: int = 64, conv_layers: int = 3,
                 kernel_size: int = 5, dropout: float = 0.0, time_upsample: int = 2, time_upsample_at: str = "conv",
                 split_blank_bias: float = 3.0, confidence_penalty: float = 0.1, decoder: str = "beam_search",
                 beam_width: int = 10, answer: str | None = None, **extra):
        Mode.__init__(self, vocab, max_length, time_steps=time_steps, units=units, conv_layers=conv_layers,
                      kernel_size=kernel_size, dropout=dropout, time_upsample=time_upsample,
                      time_upsample_at=time_upsample_at, split_blank_bias=split_blank_bias,
                      confidence_penalty=confidence_penalty, decoder=decoder, beam_width=beam_width, answer=answer,
                      **extra)
        check_decoder(decoder, beam_width)
        if int(time_upsample) < 1:
            raise ValueError(f"mode.time_upsample={time_upsample}: must be 1 or more")
        if time_upsample_at not in ("output", "conv"):
            raise ValueError(f"mode.time_upsample_at={time_upsample_at}: choose output or conv")
        if time_upsample_at == "conv" and int(time_upsample) > 1 and int(conv_layers) < 1:
            raise ValueError("mode.time_upsample_at=conv needs mode.conv_layers >= 1 (the last one makes the steps)")
        if time_steps < self.min_time_steps:
            raise ValueError(f"mode.time_steps={time_steps}: CTC needs at least 2 x max_length + 1 = "
                             f"{self.min_time_steps} for labels of up to {self.max_length} characters")

    def build_head(self, features):
        from keras import layers

        o = self.options
        width = self.check_time_steps(features)
        x = sequence_features(features, int(o["units"]), "none", 0, o["dropout"], "ctc_tiny")
        pool = max(1, width // int(o["time_steps"]))  # width // pool >= time_steps
        if pool > 1:
            x = layers.AveragePooling1D(pool, name="ctc_tiny_pool")(x)
        up, n = int(o["time_upsample"]), int(o["conv_layers"])
        in_conv = up > 1 and o.get("time_upsample_at") == "conv"
        for i in range(n):
            if in_conv and i == n - 1:
                # time_upsample_at=conv: steps repeated before the last convolution, which then
                # tells the copies apart by their neighbours (a transposed convolution in its
                # place trained at about half the images/s here: 940 against 1,750).
                x = layers.UpSampling1D(up, name="ctc_tiny_upsample")(x)
            x = layers.Conv1D(int(o["units"]), int(o["kernel_size"]), padding="same", activation="relu",
                              name=f"ctc_tiny_conv{i}")(x)
        # time_upsample_at=output (as ctc's): each step writes `time_upsample` CTC steps.
        return self.output_steps(x, 1 if in_conv else up, o["split_blank_bias"], "ctc_tiny")
