#pragma once
// Umbrella header of the training infrastructure (kvq::train).
#include "kvq/util/atomic_file.h"
#include "kvq/train/checkpoint.h"
#include "kvq/train/config.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/progress.h"
#include "kvq/train/run_dir.h"
#include "kvq/util/sampler.h"
#include "kvq/train/schedules.h"
