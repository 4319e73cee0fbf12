package schema_test

import (
	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/schema"
)

// newOrderRegistry registers v1 (for old producers), v3 (current) and the
// v1->v2->v3 chain. v2 needs no Go type.
func newOrderRegistry(opts ...schema.Option) *schema.Registry {
	r := schema.NewRegistry(append([]schema.Option{schema.WithSource("/orders")}, opts...)...)
	schema.Register[ordertest.V1](r, ordertest.Created, 1)
	schema.Register[ordertest.V3](r, ordertest.Created, 3)
	r.Upcast(ordertest.Created, 1, 2, ordertest.Up1to2)
	r.Upcast(ordertest.Created, 2, 3, ordertest.Up2to3)
	return r
}
