"""Province vocabulary and the per-province constants of the spec (000 §1.1, §4.1, §6).

Province ids follow the order of spec 000 §1.1, which is also the order of the
``losses.csv`` accuracy columns of spec 003.
"""

PROVINCES = (
    "Sindh",
    "Punjab",
    "Khyber Pakhtunkhwa",
    "Islamabad Capital Territory",
    "Gilgit-Baltistan",
    "Balochistan",
    "Azad Kashmir",
)
NUM_PROVINCES = len(PROVINCES)
PROVINCE_ID = {name: i for i, name in enumerate(PROVINCES)}

# Short keys used in column names (spec 003 §12.3: sindh_acc, punjab_acc, ...).
PROVINCE_SHORT = {
    "Sindh": "sindh",
    "Punjab": "punjab",
    "Khyber Pakhtunkhwa": "kpk",
    "Islamabad Capital Territory": "ict",
    "Gilgit-Baltistan": "gb",
    "Balochistan": "balochistan",
    "Azad Kashmir": "ajk",
}

# Province shares of the published dataset (spec 000 §1.1), as fractions.
SPEC_SHARES = {
    "Sindh": 89252,
    "Punjab": 24645,
    "Khyber Pakhtunkhwa": 5881,
    "Islamabad Capital Territory": 4841,
    "Gilgit-Baltistan": 3125,
    "Balochistan": 550,
    "Azad Kashmir": 297,
}
_total = sum(SPEC_SHARES.values())
SPEC_SHARES = {k: v / _total for k, v in SPEC_SHARES.items()}

# Distance-aware label smoothing temperature in km (spec 000 §4.1).
TAU_KM = {
    "Islamabad Capital Territory": 10.0,
    "Sindh": 30.0,
    "Punjab": 60.0,
    "Khyber Pakhtunkhwa": 50.0,
    "Azad Kashmir": 40.0,
    "Gilgit-Baltistan": 100.0,
    "Balochistan": 100.0,
}

# Offset clamp scale: |offset| <= radius_km * scale (spec 000 §6). The spec gives no value
# for Azad Kashmir; we use 1.2 (docs/decisions.md): it is sparse and mountainous like
# Gilgit-Baltistan (1.4), but its small area keeps its cells smaller than GB's.
OFFSET_SCALE = {
    "Punjab": 0.6,
    "Islamabad Capital Territory": 0.6,
    "Sindh": 1.0,
    "Khyber Pakhtunkhwa": 1.0,
    "Gilgit-Baltistan": 1.4,
    "Balochistan": 1.4,
    "Azad Kashmir": 1.2,
}

# UTM zone per province: the zone holding the centroid of the shipped province polygon
# (docs/decisions.md). Fixed per province, so cells never depend on which samples arrived.
UTM_ZONE = {
    "Balochistan": 41,
    "Sindh": 42,
    "Khyber Pakhtunkhwa": 42,
    "Punjab": 43,
    "Islamabad Capital Territory": 43,
    "Gilgit-Baltistan": 43,
    "Azad Kashmir": 43,
}

# Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088
