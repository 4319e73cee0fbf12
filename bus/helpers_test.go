package bus_test

import "github.com/busline/busline/bus/kafka"

func kafkaCfgBad() kafka.Config { return kafka.Config{InitialOffset: "latest"} }
