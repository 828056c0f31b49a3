"""Per-row quality flags shared by `annotate` and `predict_files`."""
import enum

__all__ = ["Flag", "describe_flags"]


class Flag(enum.IntFlag):
    """Bits of the ``<prefix>_flags`` column. Zero means a clean stamp."""

    #: The source lies outside every image (no stamp; outputs masked).
    OFF_IMAGE = 1
    #: The stamp runs over the image edge (radio model: the 540 arcsec FIRST field about
    #: the source does); the missing part was filled.
    EDGE = 2
    #: NaN, inf, BLANK or masked pixels, or masking sentinels (|value| >= 1e30, e.g. ZTF's
    #: -3.4e38), above the threshold, filled before scoring (only pixels of the data count:
    #: the filled part of an EDGE stamp does not, nor the part of the model's field that a
    #: resampled stamp does not cover, which is EXTRAPOLATED's).
    BLANK = 4
    #: The image has no (celestial) WCS, so the stamp could not be placed or scaled.
    NO_WCS = 8
    #: Resampling extrapolated: the model grid is much finer than the data, or the
    #: stamp does not cover the model's field (radio model: or the header's restoring
    #: beam, BMAJ, is more than twice FIRST's 5.4 arcsec).
    EXTRAPOLATED = 16
    #: The input could not be used at all (unreadable, corrupt, wrong shape); outputs masked.
    BAD_INPUT = 32
    #: The stamp is constant (e.g. all zero): outputs are not meaningful. For stamps of a
    #: float image tile-compressed with loss (fpack's quantisation, whose dither spreads a
    #: flat area over values up to one step apart: `annotate`'s images, `predict_files`'
    #: FITS stamp files), constant to the precision the file keeps: values spanning no
    #: more than the largest quantisation step (ZSCALE) of the tiles under the stamp, or
    #: its plane (on block-averaged stamps, annotate's and triplets resampled onto the
    #: model's grid, 10 / sqrt(12 A) steps where less, A image pixels per block).
    CONSTANT = 64
    #: A band or triplet member is missing (e.g. the source is on the images of some bands
    #: only); outputs masked.
    MISSING_BAND = 128
    #: No significant source in the stamp (radio images in flux units: no pixel of the
    #: network's field reaches 5 times the noise RMS above the background, the field's
    #: median where positive); the class is not meaningful.
    NO_SOURCE = 256
    #: The image header gives a saturation level (``SATURATE``, ``SATURATA``/``SATURATB``
    #: or ``SATLEVEL``, the smallest of those given; the primary header's where an image
    #: extension gives none) and a valid pixel of the data within 3 pixels of the stamp's
    #: centre reaches it: the core is clipped, so the outputs (morphology of a saturated
    #: core, real/bogus score of a saturated star's residual) are not trustworthy. For
    #: triplets, any member whose header gives a level counts.
    SATURATED = 512
    #: The network input lies outside the training distribution in a way the model cannot
    #: signal itself (radio images: more than ``radio.MAX_POSITIVE_FRACTION``, 15 %, of the
    #: network-input pixels are above zero, i.e. above the data-set threshold of 3 times the
    #: noise; at most 12.8 % in the training images: a source on a background offset by a
    #: few sigma, or a field filled with emission; or, for images in flux units, the
    #: background, the sigma-clipped median of the cutout, is more than
    #: ``radio.MAX_BACKGROUND_SIGMA``, 0.5, times the noise above zero: FIRST maps are
    #: background-subtracted, and a 1- or 2-sigma pedestal leaves only 2-12 % of the network
    #: input above zero; or more than 1.5 times the noise below zero
    #: (``radio.MIN_BACKGROUND_SIGMA``, -1.5): the data-set threshold, counted from zero,
    #: then cuts the source's faint emission; or the background of a 75-pixel strip along
    #: one edge of the cutout, in units of its own noise, is beyond those bounds: a pedestal
    #: over part of the cutout; or the mean background of an 8-pixel ring about the centre
    #: lies more than 0.5 times the noise below zero (``radio.MIN_RING_SIGMA``), and by more
    #: than 5 times its uncertainty (``radio.RING_SIGNIFICANCE``) and a tenth of an 8-bit
    #: step of the data-set scaling (``radio.RING_MIN_STEPS``): a negative bowl around
    #: the source, or a pedestal 0.5 to 1.5 sigma below zero); the outputs are not
    #: trustworthy.
    OUT_OF_DISTRIBUTION = 1024

    @classmethod
    def unusable(cls):
        """Flags that leave no stamp to score (outputs are masked).

        Returns
        -------
        Flag
            ``OFF_IMAGE | BAD_INPUT | MISSING_BAND``.
        """
        return cls.OFF_IMAGE | cls.BAD_INPUT | cls.MISSING_BAND


def describe_flags(value):
    """Names of the bits set in ``value``.

    Parameters
    ----------
    value : int
        A ``<prefix>_flags`` value.

    Returns
    -------
    str
        E.g. ``'EDGE|BLANK'``; ``''`` for 0; bits that are no `Flag` show as
        ``'0x...'`` (e.g. from a newer astromorph).

    Raises
    ------
    astromorph.exceptions.InvalidArgumentTypeError
        A ``value`` that is no number (a string, None, a boolean).
    astromorph.exceptions.InvalidArgumentError
        A negative value or one that is not whole.
    """
    from .preprocessing._checks import check_whole

    value = check_whole(value, "flags value", minimum=0)
    names = [f.name for f in Flag if value & f]
    unknown = value & ~sum(int(f) for f in Flag)
    if unknown:
        names.append(hex(unknown))
    return "|".join(names)
