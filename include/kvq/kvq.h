#pragma once
// Umbrella header of the kvq library.
#include "kvq/functional/cholesky_update.h"
#include "kvq/functional/decoding.h"
#include "kvq/functional/intention.h"
#include "kvq/functional/kernel_intention.h"
#include "kvq/functional/linear_attention.h"
#include "kvq/functional/options.h"
#include "kvq/functional/positional_encoding_2d.h"
#include "kvq/functional/softmax_attention.h"
#include "kvq/modules/attention_cache.h"
#include "kvq/modules/multi_head_kvq.h"
#include "kvq/modules/state_dict.h"
#include "kvq/registry.h"
