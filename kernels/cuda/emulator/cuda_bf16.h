#pragma once
// Host stand-in for the CUDA header; see cuda_emulation.h.
#include "cuda_emulation.h"
