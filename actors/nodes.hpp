// The CAF actors of a pnmkv cluster, one file each: coordinator, gpu_host, pnm_device and
// driver, with what they share (atoms, the fabric bridge, the join protocol) in
// node_common.hpp. Include only from actors/*.cpp and apps/ code that wires a cluster: CAF
// headers are heavy.
#pragma once

#include "actors/coordinator.hpp"
#include "actors/driver.hpp"
#include "actors/gpu_host.hpp"
#include "actors/node_common.hpp"
#include "actors/pnm_device.hpp"
