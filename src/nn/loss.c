/* loss.c: dispatches the configured loss over the network outputs (deep supervision). */
#include "nn/loss.h"

#include <string.h>

#include "core/common.h"
#include "nn/moe.h"

int camo_loss_parse(const char *name, camo_loss_kind *out) {
    static const struct { const char *n; camo_loss_kind k; } t[] = {
        {"structure", LOSS_STRUCTURE}, {"bce", LOSS_BCE}, {"dice", LOSS_DICE},
        {"bce+dice", LOSS_BCE_DICE}, {"ce", LOSS_CE},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].n, name)) { *out = t[i].k; return 0; }
    return -1;
}

static int n_used(const camo_net *net, int deep_supervision) {
    return deep_supervision ? net->n_outputs : 1;
}

int camo_loss_check(const camo_net *net, camo_loss_kind kind, int deep_supervision) {
    for (int i = 0; i < n_used(net, deep_supervision); i++) {
        int H, W, C;
        camo_net_output((camo_net *)net, i, &H, &W, &C);
        if (H != net->H || W != net->W) {
            CAMO_ERR("%s: output '%s' is %dx%d but the input is %dx%d: add a resize with "
                     "like = \"input\" before it", net->source, net->outputs[i].name, H, W,
                     net->H, net->W);
            return -1;
        }
        int want = kind == LOSS_CE ? net->classes : 1;
        if (C != want || (kind == LOSS_CE && C < 2)) {
            CAMO_ERR("%s: output '%s' has %d channels; loss \"%s\" needs %s", net->source,
                     net->outputs[i].name, C, kind == LOSS_CE ? "ce" : "binary",
                     kind == LOSS_CE ? "classes >= 2 channels (set data.classes)" : "1 channel");
            return -1;
        }
    }
    return 0;
}

void camo_loss_forward_backward(camo_net *net, camo_loss_kind kind, int deep_supervision,
                                int n, const float *target, const int32_t *labels,
                                int ignore_index, double norm_images, double norm_pixels,
                                float *loss_dev) {
    camo_backend *be = net->be;
    for (int i = 0; i < n_used(net, deep_supervision); i++) {
        int H, W, C;
        const float *logits = camo_net_output(net, i, &H, &W, &C);
        float *dlogits = camo_net_output_grad(net, i);
        double w = i == 0 ? 1.0 : net->outputs[i].weight;
        if (w == 0) continue;
        /* a weight w is a norm divided by w: the ops add sum/norm */
        float ni = (float)(norm_images / w), np = (float)(norm_pixels / w);
        switch (kind) {
        case LOSS_STRUCTURE:
            be->loss_structure(be, n, H, W, loss_dev, dlogits, logits, target, ni);
            break;
        case LOSS_BCE:
            be->loss_bce_logits(be, n, H, W, loss_dev, dlogits, logits, target, np);
            break;
        case LOSS_DICE:
            be->loss_dice(be, n, H, W, loss_dev, dlogits, logits, target, ni);
            break;
        case LOSS_BCE_DICE:
            be->loss_bce_logits(be, n, H, W, loss_dev, dlogits, logits, target, np);
            be->loss_dice(be, n, H, W, loss_dev, dlogits, logits, target, ni);
            break;
        case LOSS_CE:
            be->loss_cross_entropy(be, n, H, W, C, loss_dev, dlogits, logits, labels,
                                   ignore_index, np);
            break;
        }
    }
    camo_moe_set_balance_norm(net, norm_images); /* mixture of experts: the balancing loss */
}
