"""Write label_maps/totalseg_v2.json from TotalSegmentator's own class map, with our organ names.

    python data_manifests/make_totalseg_map.py \
        ../shared/data/real/petct_dicom/totalseg_classmap_total_v2.json

Names go through medseg.data.labels.canonical_name (kidney_right -> right_kidney, ...), so a
TotalSegmentator mask can be compared by name with BTCV, AMOS or FLARE22 labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medseg.data.labels import LABEL_MAP_DIR, totalsegmentator_map

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = LABEL_MAP_DIR / "totalseg_v2.json"
    out.write_text(json.dumps(totalsegmentator_map(Path(sys.argv[1])), indent=2) + "\n")
    print(f"wrote {out}")
