// The execution modes (docs/DESIGN.md §2) and the cross-shard selection rules (§3), shared
// by the live system and the simulator. Defined in model/modes.hpp, below config/, which
// parses them once (config/spec.hpp); this header keeps the old include working.
#pragma once

#include "model/modes.hpp"
