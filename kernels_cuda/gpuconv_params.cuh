// The sizes and strides of one convolution: the one by-value argument every convolution kernel
// takes after its pointers. gpuconv/params.py builds the same bytes on the host (its FIELDS
// list these names in this order; the tests check that they agree and that the sizes match).
//
// It always describes the forward convolution y = conv(x, filters): x is the input-shaped array
// (N, C_in, ID, IH, IW) and y the output-shaped one (N, C_out, OD, OH, OW), whichever of the two
// a kernel reads or writes (the adjoints read an output-shaped gradient and write an
// input-shaped one). 1-D and 2-D calls have unit leading spatial dims. Every field is a
// long long, so the struct has no padding between fields.
#pragma once

struct gc_conv {
    long long N, C_in, C_out, groups;
    long long Cg;                  // C_in / groups: kernels per filter
    long long Cog;                 // C_out / groups: filters per group
    long long ID, IH, IW;          // input spatial size (after any non-zero padding mode)
    long long OD, OH, OW;          // output spatial size
    long long KD, KH, KW;          // kernel size
    long long SD, SH, SW;          // stride
    long long PD, PH, PW;          // zero padding before each axis
    long long DD, DH, DW;          // dilation
    long long xs_n, xs_c, xs_d, xs_h, xs_w;  // element strides of x (any sign: views work)
    long long ys_n, ys_c, ys_d, ys_h, ys_w;  // element strides of y
    long long has_bias;            // 1: add bias[channel] to each element written
    long long channels_last;       // 1: the array written is channels-last (neighbouring threads
                                   // then take neighbouring channels, so stores coalesce)
};
